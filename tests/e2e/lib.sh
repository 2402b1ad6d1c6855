# shellcheck shell=bash
# Helpers for the end-to-end tests: source this file from a bash script (set -euo pipefail ok).
#
#   e2e_provision                      run tests/e2e/provision (no-op when done) and load its env
#   qemu_cmd [--print] ARGS...         run the private QEMU (or print its command line, quoted)
#   build_initramfs OUT BODY [SRC:GUEST_PATH ...]
#                                      pack busybox + modules + /init (prologue + BODY) + files
#   run_guest [options] [-- RAW_QEMU_ARGS...]   boot the guest; see the comment above run_guest
#   e2e_check_log LOG [PASS_NAME ...]  assert markers: E2E-DONE, no E2E-FAIL, each PASS_NAME
#   e2e_log_tail LOG [N]               print the last N (40) lines of a log, to stderr
#
# Guest convention: /init sources /e2e/prologue.sh (tests/e2e/guest/prologue.sh: mounts,
# load_module, e2e_pass/e2e_fail/e2e_check, wait_for, pci_* helpers), then runs the per-test
# BODY script (sourced in a subshell, so `exit` in it is fine), prints E2E-DONE and powers off.

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
E2E_REPO=$(cd "$E2E_DIR/../.." && pwd)
E2E_CACHE="$E2E_REPO/.cache/e2e"
E2E_LOGS="$E2E_CACHE/logs"
mkdir -p "$E2E_LOGS"
# shellcheck source=/dev/null
[ -f "$E2E_CACHE/env.sh" ] && . "$E2E_CACHE/env.sh"
if [ "${E2E_CACHE}" != "$E2E_REPO/.cache/e2e" ]; then
  # env.sh was written for a checkout elsewhere (this one was copied or moved with its
  # cache): never use that checkout's cache; provision (fast) rewrites env.sh for this one.
  E2E_CACHE="$E2E_REPO/.cache/e2e"
  unset E2E_QEMU_BIN
fi

e2e_provision() {
  "$E2E_DIR/provision" >/dev/null || return 1
  # shellcheck source=/dev/null
  . "$E2E_CACHE/env.sh"
}

_e2e_need_env() {
  if [ -z "${E2E_QEMU_BIN:-}" ] || [ ! -x "${E2E_QEMU_BIN}" ]; then e2e_provision; fi
}

# qemu_cmd [--print] ARGS...
# Runs qemu-system-x86_64 from the private root through that root's own dynamic loader, with the
# firmware search paths (-L) set. With --print, writes the shell-quoted command line instead.
qemu_cmd() {
  _e2e_need_env
  _e2e_qemu_argv
  if [ "${1:-}" = "--print" ]; then
    shift; printf '%q ' "${E2E_QEMU_ARGV[@]}" "$@"; echo
  else
    "${E2E_QEMU_ARGV[@]}" "$@"
  fi
}

# _e2e_qemu_argv: set the array E2E_QEMU_ARGV to the loader + qemu + -L firmware paths.
_e2e_qemu_argv() {
  if [ -z "${E2E_QEMU_LD:-}" ]; then   # the system's QEMU (provision found it good enough)
    E2E_QEMU_ARGV=("$E2E_QEMU_BIN")
    return 0
  fi
  E2E_QEMU_ARGV=("$E2E_QEMU_LD" --library-path "$E2E_QEMU_LIBPATH" "$E2E_QEMU_BIN"
                 -L "$E2E_QEMU_ROOT/usr/share/qemu" -L "$E2E_QEMU_ROOT/usr/share/seabios")
  # NIC option ROMs, only if an ipxe-qemu package was ever unpacked there (run_guest uses -nic none).
  [ -d "$E2E_QEMU_ROOT/usr/lib/ipxe/qemu" ] && E2E_QEMU_ARGV+=(-L "$E2E_QEMU_ROOT/usr/lib/ipxe/qemu")
  return 0
}

# build_initramfs OUT BODY [SRC:GUEST_PATH ...]
# Writes a gzip'ed newc cpio to OUT containing: busybox-static with its applet symlinks (made at
# pack time), the staged modules at /lib/modules/KV (with modules.dep), /e2e/prologue.sh, BODY as
# /e2e/body.sh, a generated /init, and each extra SRC (file or directory) at GUEST_PATH
# (modes kept; e.g. a static test binary: target/.../guest-test:/bin/guest-test).
# OUT is two concatenated archives (the kernel unpacks both): a cached base (busybox, symlinks,
# modules, prologue; rebuilt when provisioning or the prologue change) + a small per-test one.
build_initramfs() {
  [ $# -ge 2 ] || { echo "usage: build_initramfs OUT BODY [SRC:GUEST_PATH ...]" >&2; return 2; }
  _e2e_need_env
  local out=$1 body=$2; shift 2
  [ -f "$body" ] || { echo "build_initramfs: no body script $body" >&2; return 1; }
  _e2e_base_initramfs || return 1
  local root; root=$(mktemp -d "${TMPDIR:-/tmp}/e2e-initramfs.XXXXXX")
  # Explicit error checks throughout: errexit does not apply inside `f || ...` callers.
  if ! _e2e_fill_overlay "$root" "$body" "$@" \
     || ! cp "$E2E_CACHE/initramfs-base.cpio.gz" "$out.tmp" \
     || ! _e2e_pack "$root" >>"$out.tmp"; then
    rm -rf "$root" "$out.tmp"; echo "build_initramfs: failed to build $out" >&2; return 1
  fi
  rm -rf "$root"
  mv "$out.tmp" "$out"
}

# _e2e_pack DIR: gzip'ed newc cpio of DIR's contents on stdout (owned by root).
_e2e_pack() {
  (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -1
}

# _e2e_base_initramfs: (re)build $E2E_CACHE/initramfs-base.cpio.gz if missing or stale.
_e2e_base_initramfs() {
  local base="$E2E_CACHE/initramfs-base.cpio.gz" dep
  if [ -f "$base" ]; then
    local stale=0
    for dep in "$E2E_CACHE/provision.stamp" "$E2E_DIR/guest/prologue.sh" "$E2E_DIR/lib.sh"; do
      [ "$dep" -nt "$base" ] && stale=1
    done
    [ "$stale" = 0 ] && return 0
  fi
  local r a; r=$(mktemp -d "${TMPDIR:-/tmp}/e2e-initramfs-base.XXXXXX")
  {
    mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc,e2e,lib/modules,root} &&
    cp "$E2E_BUSYBOX" "$r/bin/busybox" &&
    # Applet symlinks at pack time: every path busybox reports, pointing at /bin/busybox.
    while read -r a; do
      [ "$a" = bin/busybox ] && continue
      mkdir -p "$r/$(dirname "$a")" && ln -sf /bin/busybox "$r/$a" || { rm -rf "$r"; return 1; }
    done < <("$E2E_BUSYBOX" --list-full) &&
    cp -a "$E2E_MODSTAGE/lib/modules/$E2E_KV" "$r/lib/modules/" &&
    cp "$E2E_DIR/guest/prologue.sh" "$r/e2e/prologue.sh" &&
    _e2e_pack "$r" >"$base.tmp" &&
    mv "$base.tmp" "$base"
  } || { rm -rf "$r" "$base.tmp"; echo "build_initramfs: base archive failed" >&2; return 1; }
  rm -rf "$r"
}

# _e2e_fill_overlay ROOT BODY [SRC:GUEST_PATH ...]: the per-test tree (/init, body, extras).
_e2e_fill_overlay() {
  local r=$1 body=$2 spec src dst; shift 2
  mkdir -p "$r/e2e" && cp "$body" "$r/e2e/body.sh" || return 1
  cat >"$r/init" <<'INIT' || return 1
#!/bin/sh
# Generated by tests/e2e/lib.sh build_initramfs: prologue, per-test body, then power off.
. /e2e/prologue.sh
echo "E2E-BEGIN $(uname -r)"
( . /e2e/body.sh ); rc=$?
[ "$rc" -eq 0 ] || e2e_fail body "exit status $rc"
echo "E2E-DONE"
sync
poweroff -f
INIT
  chmod 755 "$r/init" || return 1
  for spec in "$@"; do
    src=${spec%%:*}; dst=${spec#*:}
    if [ "$src" = "$spec" ] || [ -z "$dst" ]; then
      echo "build_initramfs: bad SRC:GUEST_PATH '$spec'" >&2; return 1
    fi
    [ -e "$src" ] || { echo "build_initramfs: no such file $src" >&2; return 1; }
    mkdir -p "$r/$(dirname "$dst")" && cp -a "$src" "$r/$dst" || return 1
  done
}

# run_guest [options] [-- RAW_QEMU_ARGS...]
#   --initrd FILE      initramfs from build_initramfs (required)
#   --log FILE         console + QEMU stderr capture (default: $E2E_LOGS/guest.log)
#   --socket SPEC      attach a vfio-user server; repeatable. SPEC = PATH[,bus=B][,addr=A][,id=I]
#                      [,key=value...]; becomes -device '{"driver":"vfio-user-pci",
#                      "socket":{"type":"unix","path":PATH},"bus":B,...}' (numbers/true/false
#                      are passed unquoted, except bus/addr/id which are always strings)
#   --append STR       extra kernel command line (e.g. "e2e.mode=x intel_iommu=on")
#   --timeout SEC      kill QEMU after SEC seconds (default 120); run_guest then returns 124
#   --mem MIB          guest RAM in MiB (default 512), a shared memfd backend (DMA_MAP carries fds)
#   --machine OPTS     extra -machine options, e.g. kernel-irqchip=split
#   --serial2 PATH     a second serial port, the guest's ttyS1, that QEMU serves on the UNIX
#                      socket PATH (without waiting for a client): a host<->guest channel for
#                      tests (the host end: sock-chat PATH). The console stays on ttyS0/the log
#   --qemu-arg ARG     one raw QEMU argument; repeatable (or put them all after --)
#   --echo             also copy the console to stdout while running
#   --print            print the QEMU command line and do not run it
# Returns QEMU's exit status (0 after the guest's poweroff). Sets E2E_GUEST_SECS (wall time).
run_guest() {
  _e2e_need_env
  local initrd="" log="$E2E_LOGS/guest.log" append="" timeout_s=120 mem=512 machine="" echo=0 print=0
  local -a devs=() raw=() serial=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --initrd)   initrd=$2; shift 2 ;;
      --log)      log=$2; shift 2 ;;
      --socket)   devs+=("$(_e2e_socket_json "$2")") || return 2; shift 2 ;;
      --append)   append="$append $2"; shift 2 ;;
      --timeout)  timeout_s=$2; shift 2 ;;
      --mem)      mem=$2; shift 2 ;;
      --machine)  machine="$machine,$2"; shift 2 ;;
      --serial2)  # Naming any serial port drops QEMU's default one: keep ttyS0 on stdio (with
                  # the monitor, as -nographic does by default) and add ttyS1 on the socket.
                  serial=(-serial mon:stdio -chardev "socket,id=e2eserial2,path=$2,server=on,wait=off"
                          -serial chardev:e2eserial2); shift 2 ;;
      --qemu-arg) raw+=("$2"); shift 2 ;;
      --echo)     echo=1; shift ;;
      --print)    print=1; shift ;;
      --)         shift; raw+=("$@"); break ;;
      *) echo "run_guest: unknown option $1" >&2; return 2 ;;
    esac
  done
  [ -n "$initrd" ] && [ -f "$initrd" ] || { echo "run_guest: --initrd FILE required" >&2; return 2; }
  local -a args=(
    -accel "${E2E_ACCEL:-tcg}" -smp 1 -m "$mem"
    -object "memory-backend-memfd,id=mem,size=${mem}M,share=on"
    -machine "q35,memory-backend=mem$machine"
    -nographic -vga none -nic none -no-reboot
    -kernel "$E2E_KERNEL" -initrd "$initrd"
    -append "console=ttyS0 panic=-1 quiet loglevel=4$append"
  )
  # KVM (E2E_ACCEL=kvm) where the host supports it; TCG is the default because a guest under
  # these machines' paravirtual KVM stops with an internal error.
  [ "${E2E_ACCEL:-tcg}" = kvm ] && args+=(-cpu host)
  local d
  args+=("${serial[@]}")
  for d in "${devs[@]}"; do args+=(-device "$d"); done
  args+=("${raw[@]}")
  if [ "$print" = 1 ]; then qemu_cmd --print "${args[@]}"; return 0; fi
  mkdir -p "$(dirname "$log")"
  local t0 rc=0; t0=$(date +%s.%N)
  _e2e_qemu_argv
  if [ "$echo" = 1 ]; then
    # The exit status wanted is QEMU's (PIPESTATUS[0]), whatever pipefail/errexit say.
    local had_e=0; [[ $- == *e* ]] && had_e=1
    set +e
    timeout -k 5 "$timeout_s" "${E2E_QEMU_ARGV[@]}" "${args[@]}" </dev/null 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    [ "$had_e" = 1 ] && set -e
  else
    timeout -k 5 "$timeout_s" "${E2E_QEMU_ARGV[@]}" "${args[@]}" </dev/null >"$log" 2>&1 || rc=$?
  fi
  E2E_GUEST_SECS=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "run_guest: QEMU timed out after ${timeout_s}s (log: $log)" >>"$log"
    echo "run_guest: QEMU timed out after ${timeout_s}s (log: $log)" >&2
  fi
  return "$rc"
}

# _e2e_socket_json SPEC -> the -device JSON for one vfio-user-pci device.
_e2e_socket_json() {
  local spec=$1 path kv k v json
  path=${spec%%,*}
  [ -n "$path" ] || { echo "run_guest: empty socket path in '$spec'" >&2; return 2; }
  json="{\"driver\":\"vfio-user-pci\",\"socket\":{\"type\":\"unix\",\"path\":\"$path\"}"
  if [ "$spec" != "$path" ]; then
    local IFS=,
    for kv in ${spec#*,}; do
      k=${kv%%=*}; v=${kv#*=}
      case "$k" in
        bus|addr|id) json+=",\"$k\":\"$v\"" ;;
        *) if [[ "$v" =~ ^-?[0-9]+$|^true$|^false$ ]]; then json+=",\"$k\":$v"; else json+=",\"$k\":\"$v\""; fi ;;
      esac
    done
  fi
  echo "$json}"
}

# e2e_log_tail LOG [N]: show the end of a log on stderr (used on failures).
e2e_log_tail() {
  local n=${2:-40}
  { echo "---- last $n lines of $1"; tail -n "$n" "$1" 2>/dev/null | tr -d '\r'; echo "----"; } >&2
}

# e2e_check_log LOG [PASS_NAME ...]
# Succeeds if LOG has E2E-DONE, no E2E-FAIL line, and an "E2E-PASS NAME" for every NAME given.
# On failure prints what is missing and the log tail, and returns 1.
e2e_check_log() {
  local log=$1; shift
  local bad=() n
  tr -d '\r' <"$log" >"$log.clean" 2>/dev/null || true
  grep -q '^E2E-DONE' "$log.clean" || bad+=("no E2E-DONE")
  if grep -q '^E2E-FAIL' "$log.clean"; then
    while read -r l; do bad+=("$l"); done < <(grep '^E2E-FAIL' "$log.clean")
  fi
  for n in "$@"; do grep -qx "E2E-PASS $n" "$log.clean" || bad+=("missing E2E-PASS $n"); done
  rm -f "$log.clean"
  if [ ${#bad[@]} -gt 0 ]; then
    printf 'e2e: %s\n' "${bad[@]}" >&2
    e2e_log_tail "$log"
    return 1
  fi
}
