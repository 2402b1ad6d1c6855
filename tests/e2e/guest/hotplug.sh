# Guest body of tests/e2e/lifecycle, hot-plug phase. The host plugs an mtty (1 port, loopback)
# and an mbochs into two PCIe root ports with QMP device_add and takes them away with
# device_del, e2e.cycles times; the guest follows through sysfs and reports each step on the
# console (E2E-SYNC lines the host waits for):
#   plugged K    both functions present, 8250_pci and bochs-drm bound, the port echoes
#   unplugged K  both gone (the drivers unbound)
# Then the host plugs them once more ("plugged-for-removal"): its removals are refused while
# QEMU holds the functions (QEMU's vfio-user-pci routes no device request interrupt), then it
# unplugs them through QMP ("unplugged-for-removal") and removes the instances. Last, the host
# force-removes the mdpy on pcie.0 (a bus without hot-plug): its registers stop answering.

MTTY_ID=4348:3253
BOCHS_ID=1234:1111
MDPY_ID=1b36:000f
cycles=$(e2e_arg cycles 5)
load_module bochs

# until_present ID [SECS]: wait for a function with ID to appear; print its sysfs dir.
until_present() {
  _t=$(( ${2:-60} * 10 ))
  while [ $_t -gt 0 ]; do
    _d=$(pci_find "$1" | head -n1)
    [ -n "$_d" ] && { echo "$_d"; return 0; }
    sleep 0.1; _t=$((_t - 1))
  done
  return 1
}
# until_gone ID [SECS]: wait for every function with ID to disappear.
until_gone() {
  _t=$(( ${2:-60} * 10 ))
  while [ -n "$(pci_find "$1")" ]; do
    [ $_t -gt 0 ] || return 1
    sleep 0.1; _t=$((_t - 1))
  done
}
# until_no_path PATH [SECS]: wait for PATH to go away.
until_no_path() {
  _t=$(( ${2:-20} * 10 ))
  while [ -e "$1" ]; do
    [ $_t -gt 0 ] || return 1
    sleep 0.1; _t=$((_t - 1))
  done
}
# until_bound DIR DRIVER [SECS]
until_bound() {
  _t=$(( ${3:-30} * 10 ))
  until bound_to "$1" "$2" 2>/dev/null; do
    [ $_t -gt 0 ] || return 1
    sleep 0.1; _t=$((_t - 1))
  done
}
# echoes DIR: the card's (only) port loops back what is written to it.
echoes() {
  _tty=$(pci_ttys "$1" | head -n1)
  [ -n "$_tty" ] || return 1
  stty -F "$_tty" raw -echo 115200 || return 1
  exec 4<>"$_tty"
  echo "hotplug-$$-$2" >&4
  _line=""
  read -t 10 _line <&4
  exec 4>&-
  [ "$(echo "$_line" | tr -d '\r')" = "hotplug-$$-$2" ]
}
# plugged TAG: both functions arrive and their drivers bind and work.
plugged() {
  _m=$(until_present $MTTY_ID) && _b=$(until_present $BOCHS_ID) || {
    e2e_fail "$1-present" "mtty '$(pci_find $MTTY_ID)' mbochs '$(pci_find $BOCHS_ID)'"
    return 1
  }
  e2e_check "$1-mtty-bound" until_bound "$_m" serial || return 1
  e2e_check "$1-mbochs-bound" until_bound "$_b" bochs-drm || return 1
  e2e_check "$1-fb" wait_for /dev/fb0 20 || return 1
  e2e_check "$1-mtty-echo" echoes "$_m" "$1"
}

k=1
while [ $k -le "$cycles" ]; do
  plugged "cycle$k" || exit 1
  echo "E2E-SYNC plugged $k"
  if until_gone $MTTY_ID && until_gone $BOCHS_ID; then
    e2e_pass "cycle$k-unplugged"
  else
    e2e_fail "cycle$k-unplugged" "still present: $(pci_find $MTTY_ID) $(pci_find $BOCHS_ID)"
    exit 1
  fi
  e2e_check "cycle$k-fb-gone" until_no_path /dev/fb0
  echo "E2E-SYNC unplugged $k"
  k=$((k + 1))
done

# --- removal: refused while QEMU holds the functions, then unplugged through QMP -----------
plugged removal || exit 1
echo "E2E-SYNC plugged-for-removal"
e2e_check removal-mtty-unplugged until_gone $MTTY_ID 90
e2e_check removal-mbochs-unplugged until_gone $BOCHS_ID 30
echo "E2E-SYNC unplugged-for-removal"

# --- mdpy on pcie.0: QEMU cannot unplug it; the host's forced removal cuts it off ----------
mdpy=$(pci_find $MDPY_ID | head -n1)
# The mode width mdpy advertises in its config space, read through QEMU from the server.
width() { hexdump -s 0x48 -n 4 -e '1/4 "%u"' "$mdpy/config"; }
e2e_info "mdpy $mdpy width $(width)"
e2e_check mdpy-answers test "$(width)" = 1024
echo "E2E-SYNC mdpy-held"
# Once the server has closed QEMU's connection, config reads no longer reach it.
cut_off() {
  _t=600
  while [ "$(width 2>/dev/null)" = 1024 ]; do
    [ $_t -gt 0 ] || return 1
    sleep 0.1; _t=$((_t - 1))
  done
  e2e_info "mdpy width after the forced removal: '$(width 2>&1)'"
}
e2e_check mdpy-cut-off cut_off
