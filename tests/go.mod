module github.com/leviathan-dev/leviathan/tests

go 1.26.8

replace github.com/leviathan-dev/leviathan => ../
