#!/bin/sh
# Creates localforge's demo repository, leviathan/demo, on first start: the
# same repository and settings `leviathan dev` creates on a laptop. Runs as
# localforge's init container (image target runtime-git: sh and git).
#   FORGE_DATA  localforge's --data-dir
#   SEED_DIR    the files: backlog.yaml, README.md, main.go
set -eu
: "${FORGE_DATA:?}" "${SEED_DIR:?}"
parent="$FORGE_DATA/repos/leviathan"
repo="$parent/demo.git"
if [ -d "$repo" ]; then
	echo "seed: $repo exists, nothing to do"
	exit 0
fi
mkdir -p "$parent"
# Built beside its final place and renamed in, as localforge does, so no
# client ever sees a half-seeded repository. A name starting with '.' and
# without .git is neither listed nor served.
tmp=$(mktemp -d "$parent/.seed-demo-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
bare="$tmp/repo.git"
work="$tmp/work"
git init --quiet --bare --initial-branch=main "$bare"
# Partial clone and want-by-id, so the minimal fetch strategy works.
git --git-dir="$bare" config http.receivepack true
git --git-dir="$bare" config uploadpack.allowFilter true
git --git-dir="$bare" config uploadpack.allowAnySHA1InWant true
git --git-dir="$bare" config receive.denyNonFastForwards false
mkdir -p "$work/.leviathan" "$work/src"
cp "$SEED_DIR/backlog.yaml" "$work/.leviathan/backlog.yaml"
cp "$SEED_DIR/README.md" "$work/README.md"
cp "$SEED_DIR/main.go" "$work/src/main.go"
export GIT_DIR="$bare" GIT_WORK_TREE="$work" GIT_INDEX_FILE="$tmp/index"
export GIT_AUTHOR_NAME="Leviathan Seed" GIT_AUTHOR_EMAIL="seed@example.com"
export GIT_COMMITTER_NAME="Leviathan Seed" GIT_COMMITTER_EMAIL="seed@example.com"
cd "$work"
git add --all .
git -c commit.gpgsign=false -c core.hooksPath=/dev/null commit --quiet --no-verify -m "Seed repository"
unset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE
mv "$bare" "$repo"
echo "seed: created $repo"
