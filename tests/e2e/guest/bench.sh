# Guest body for tests/e2e/bench: register access times of five devices in one boot, then
# bulk transfers through an mtty socket-console port. Prints figures, asserts no speed; fails
# (E2E-FAIL) only when a device is missing or a value read back is wrong.
# Kernel arguments:
#   e2e.devs=NAME@BDF@VENDOR:DEVICE,...   the devices, by slot (the host placed them)
#   e2e.n=N                               accesses per timing
#   e2e.xfer=BYTES                        bytes per serial transfer (0: no transfers)
# Lines for the host:
#   BENCH-ACCESS NAME read_ns=R write_ns=W value=V
#   BENCH-SERIAL serial DIR BAUD bytes=N secs=S bytes_per_s=R
#   BENCH-SHA K SUM                       sha256 of the guest's copy of transfer K

n=$(e2e_arg n 2000)
xfer=$(e2e_arg xfer 262144)

e2e_info "pci devices (bdf id class driver):"
pci_devices

# bench_dev NAME BDF ID BAR OFFSET WIDTH WRITE_VALUE EXPECT
bench_dev() {
  _name=$1 _bdf=$2 _want=$3
  shift 3
  _d=/sys/bus/pci/devices/$_bdf
  _id="$(sed 's/^0x//' "$_d/vendor" 2>/dev/null):$(sed 's/^0x//' "$_d/device" 2>/dev/null)"
  if [ "$_id" != "$_want" ]; then
    e2e_fail "$_name-present" "no $_want at $_bdf (found '$_id')"
    return 1
  fi
  e2e_pass "$_name-present"
  guest-pci enable "$_bdf" || { e2e_fail "$_name-access" "guest-pci enable $_bdf"; return 1; }
  _out=$(guest-pci bench "$_bdf" "$@" 2>&1) || true
  case "$_out" in
    read_ns=*) echo "BENCH-ACCESS $_name $_out"; e2e_pass "$_name-access" ;;
    *) e2e_fail "$_name-access" "$_out" ;;
  esac
}

# The register each device is timed on (see tests/e2e/bench for why these).
for spec in $(e2e_arg devs | tr ',' ' '); do
  NAME=${spec%%@*}; rest=${spec#*@}; bdf=${rest%%@*}; id=${rest#*@}
  case "$NAME" in
    bochs-display|mbochs) set -- 2 0x502 2 0x400 0x400 ;;   # DISPI XRES, display disabled
    doorbell)             set -- 0 0x0 4 0xcafef00d 0xcafef00d ;;  # its scratch register
    mtty)                 set -- 0 0x7 1 0x5a 0x5a ;;     # port 0's SCR, through the I/O BAR
    gpio)                 set -- 2 0x4 1 0x0 - ;;         # a byte of its I/O BAR past the value
    *) e2e_fail bench-spec "unknown device $NAME"; continue ;;
  esac
  bench_dev "$NAME" "$bdf" "$id" "$1" "$2" "$3" "$n" "$4" "$5"
  [ "$NAME" = mtty ] && mtty_bdf=$bdf
done

[ "$xfer" -gt 0 ] || exit 0
[ -n "${mtty_bdf:-}" ] || { e2e_fail mtty-serial "no mtty"; exit 0; }
e2e_check mtty-bound bound_to "/sys/bus/pci/devices/$mtty_bdf" serial || exit 0
set -- $(pci_ttys "/sys/bus/pci/devices/$mtty_bdf")
[ $# -eq 2 ] || { e2e_fail mtty-serial "want 2 ports, have: $*"; exit 0; }
tty=$2
# At the card's own clock (8250_pci gives the CH352 1.8432 MHz) 115200 baud is divisor 1
# already; the second pair raises the clock (TIOCSSERIAL baud_base) and runs at its divisor 1.
clk=$(cat "/sys/class/tty/${tty#/dev/}/uartclk")
fast=$(e2e_arg fast 921600)
e2e_info "mtty port 1 is $tty, uartclk $clk: 115200 baud is divisor $((clk / 16 / 115200)); then baud_base $fast, divisor 1"
head -c "$xfer" /dev/urandom >/tmp/g2h-1.bin
head -c "$xfer" /dev/urandom >/tmp/g2h-3.bin
out=$(guest-pci serial-xfer "$tty" send:115200:/tmp/g2h-1.bin "recv:115200:$xfer:/tmp/h2g-2.bin" \
  "base:$fast" "send:$fast:/tmp/g2h-3.bin" "recv:$fast:$xfer:/tmp/h2g-4.bin" 2>&1)
rc=$?
echo "$out" | sed 's/^/BENCH-SERIAL /'
[ $rc -eq 0 ] && e2e_pass mtty-serial || e2e_fail mtty-serial "serial-xfer rc=$rc"
for k in 1 2 3 4; do
  f=$(ls /tmp/*-$k.bin 2>/dev/null) && echo "BENCH-SHA $k $(sha256sum "$f" | cut -d' ' -f1)"
done
