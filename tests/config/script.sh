# the script of tests/config/every_kind.yaml's task "scripted"
set -e
tr a-z A-Z < {{ src.path }} > {{ out.path }}
