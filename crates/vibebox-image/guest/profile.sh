# vibebox commands, typed in the box as `:name`.
# They run in the guest; anything that changes the session is confirmed on the HOST.
:help() {
  cat <<'HELP'
vibebox commands:
  :help      this help
  :explain   what this box sees: mounts, network policy, storage, runtime
  :exit      leave this terminal (the box keeps running for other terminals)
  :new       delete this session and start a fresh one (asks on the host first)
Everything else is an ordinary Linux command. You are `vibecoder`, with sudo.
HELP
}
:explain() {
  # The host sends it just after the start (up to a few seconds under TCG).
  local i=0
  while [ ! -s /run/vibebox/explain.txt ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  cat /run/vibebox/explain.txt 2>/dev/null || echo "no explanation was given by the host"
}
:exit() { exit 0; }
:new() {
  echo "vibebox: leaving the box; confirm on the host terminal to delete this session."
  # The host client sees this exit code and asks the person at the host.
  exit 197
}
