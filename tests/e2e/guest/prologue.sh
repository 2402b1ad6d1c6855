# Common guest init prologue (busybox sh). Sourced by the generated /init before the per-test
# body; the body may use every helper below. Markers printed on the console (ttyS0):
#   E2E-PASS <name>            a check passed
#   E2E-FAIL <name> <reason>   a check failed
#   E2E-DONE                   init reached the end (printed by /init, after the body)
# The host (lib.sh: e2e_check_log) looks for these in the captured console log.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true   # may be automounted already
mkdir -p /dev/pts /tmp /run
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
# Keep kernel chatter off the console so markers stay readable (dmesg still has it all).
echo 1 >/proc/sys/kernel/printk 2>/dev/null || true

E2E_KV=$(uname -r)
E2E_MODDIR=/lib/modules/$E2E_KV

e2e_pass() { echo "E2E-PASS $1"; }
e2e_fail() { _n=$1; shift; echo "E2E-FAIL $_n ${*:-failed}"; }
e2e_info() { echo "E2E-INFO $*"; }

# e2e_check NAME CMD [ARGS...]: run CMD; PASS if it exits 0, else FAIL with its output tail.
e2e_check() {
  _n=$1; shift
  _out=$("$@" 2>&1); _rc=$?
  if [ $_rc -eq 0 ]; then e2e_pass "$_n"; return 0; fi
  e2e_fail "$_n" "($*) rc=$_rc $(echo "$_out" | tail -n 3 | tr '\n' ' ')"
  return 1
}

# e2e_arg NAME [DEFAULT]: value of "e2e.NAME=VALUE" on the kernel command line.
e2e_arg() {
  for _w in $(cat /proc/cmdline); do
    case "$_w" in "e2e.$1="*) echo "${_w#e2e.$1=}"; return 0 ;; esac
  done
  [ $# -ge 2 ] && echo "$2"
  return 0
}

# _e2e_modname PATH: module name of a .ko path (basename, no .ko, '-' -> '_').
_e2e_modname() { _b=${1##*/}; _b=${_b%.ko}; echo "$_b" | tr - _; }

# _e2e_loaded NAME: true if the module is loaded (or built in).
_e2e_loaded() {
  grep -q "^$1 " /proc/modules 2>/dev/null && return 0
  grep -q "/$1.ko\$\|/$(echo "$1" | tr _ -).ko\$" "$E2E_MODDIR/modules.builtin" 2>/dev/null
}

# load_module NAME [PARAMS...]: insmod NAME and its dependencies, resolved from modules.dep
# ("path: dep1 dep2 ..." where the deepest dependency comes last). '-' and '_' are equivalent.
# A module built by the project (tests/e2e/guest-module) is not in modules.dep: a test ships it
# as $E2E_MODDIR/extra/NAME.ko and it is loaded from there (it may need only built-in code).
load_module() {
  _want=$(echo "$1" | tr - _); shift
  _e2e_loaded "$_want" && return 0
  _line=$(awk -F: -v w="$_want" '{ n=$1; sub(/.*\//,"",n); sub(/\.ko$/,"",n); gsub(/-/,"_",n);
                                   if (n==w) { print; exit } }' "$E2E_MODDIR/modules.dep")
  if [ -z "$_line" ]; then
    for _x in "$E2E_MODDIR/extra/$_want.ko" "$E2E_MODDIR/extra/$(echo "$_want" | tr _ -).ko"; do
      [ -f "$_x" ] || continue
      insmod "$_x" "$@" || { echo "load_module: insmod $_x failed" >&2; return 1; }
      return 0
    done
    echo "load_module: $_want not in modules.dep nor in $E2E_MODDIR/extra" >&2; return 1
  fi
  _path=${_line%%:*}
  # Dependencies in reverse order (leaves first).
  for _d in $(echo "${_line#*:}" | tr ' ' '\n' | sed '/^$/d' | sed -n '1!G;h;$p'); do
    _dn=$(_e2e_modname "$_d")
    _e2e_loaded "$_dn" && continue
    insmod "$E2E_MODDIR/$_d" || { echo "load_module: insmod $_d failed" >&2; return 1; }
  done
  insmod "$E2E_MODDIR/$_path" "$@" || { echo "load_module: insmod $_path failed" >&2; return 1; }
}

# wait_for PATH [SECONDS]: wait until PATH exists (default 10 s).
wait_for() {
  _t=$(( ${2:-10} * 10 ))
  while [ ! -e "$1" ] && [ $_t -gt 0 ]; do sleep 0.1; _t=$((_t - 1)); done
  [ -e "$1" ]
}

# pci_devices: "BDF VENDOR:DEVICE CLASS DRIVER" per device.
pci_devices() {
  for _p in /sys/bus/pci/devices/*; do
    [ -e "$_p" ] || continue
    _drv=-; [ -e "$_p/driver" ] && _drv=$(basename "$(readlink "$_p/driver")")
    echo "$(basename "$_p") $(sed 's/^0x//' "$_p/vendor"):$(sed 's/^0x//' "$_p/device") $(cat "$_p/class") $_drv"
  done
}

# pci_find VENDOR:DEVICE: print the sysfs dirs of matching devices (ids without 0x).
pci_find() {
  for _p in /sys/bus/pci/devices/*; do
    [ "$(sed 's/^0x//' "$_p/vendor"):$(sed 's/^0x//' "$_p/device")" = "$1" ] && echo "$_p"
  done
  return 0
}

# bind_vfio BDF: bind a PCI device to vfio-pci through driver_override.
bind_vfio() {
  load_module vfio_pci || return 1
  _p=/sys/bus/pci/devices/$1
  [ -e "$_p/driver" ] && echo "$1" >"$_p/driver/unbind"
  echo vfio-pci >"$_p/driver_override"
  echo "$1" >/sys/bus/pci/drivers_probe
  [ "$(basename "$(readlink "$_p/driver")")" = vfio-pci ]
}

# pci_ttys SYSFS_DIR: the /dev/ttyS* ports a PCI function provides, in port order. (Linux 6.x
# hangs the ports under the function: .../0000:00:01.0/0000:00:01.0:0/0000:00:01.0:0.N.)
pci_ttys() {
  _fn=$(readlink -f "$1")
  for _t in /sys/class/tty/ttyS*; do
    _d=$(readlink -f "$_t/device" 2>/dev/null) || continue
    case "$_d" in "$_fn"/*) echo "${_d##*.} /dev/${_t##*/}" ;; esac
  done | sort -n | cut -d' ' -f2
}

# bound_to SYSFS_DIR DRIVER: the function is bound to DRIVER.
bound_to() { test "$(basename "$(readlink "$1/driver")")" = "$2"; }
