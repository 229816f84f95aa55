# Sourced by the setup scripts. find_python RULE CANDIDATE...: prints the first candidate (a command name or a
# path; empty ones and unmatched glob patterns are skipped) whose interpreter's sys.version_info[:2] satisfies
# RULE, a Python comparison such as '>= (3, 12)' or '== (3, 11)'. Fails if none does.
find_python() {
  local rule="$1" c
  shift
  for c in "$@"; do
    [ -n "$c" ] || continue
    c=$(command -v "$c" 2>/dev/null) || continue
    "$c" -c "import sys; sys.exit(0 if sys.version_info[:2] $rule else 1)" 2>/dev/null && { echo "$c"; return 0; }
  done
  return 1
}
