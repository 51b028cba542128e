#!/bin/sh
# The demo agent: prints progress for a few seconds and edits files in its
# worktree, like a coding agent would.
set -e
echo "demo agent: starting in $(pwd)"
for step in 1 2 3 4 5; do
  echo "demo agent: step $step of 5"
  echo "step $step done" >> PROGRESS.md
  sleep 1
done
cat > hello.py <<'PY'
print("hello from the demo agent")
PY
echo "demo agent: wrote hello.py and PROGRESS.md"
ls -l
echo "demo agent: done"
