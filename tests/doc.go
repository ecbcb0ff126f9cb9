// Package tests holds black-box tests of the built leviathan binary and,
// later, container end-to-end tests. It is a separate module so test-only
// dependencies (dockertest) stay out of the product's go.mod.
package tests
