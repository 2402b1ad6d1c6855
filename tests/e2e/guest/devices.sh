# Guest body for tests/e2e/devices: the sample devices served over vfio-user, seen and driven
# by a stock Linux guest.
#   mbochs (1234:1111): the guest's bochs-drm binds it; the guest fills /dev/fb0 with a colour
#                       the host then finds in the device's framebuffer (PNG snapshot).
#   mdpy   (1b36:000f): no guest driver; the guest maps BAR0 through sysfs and paints it.
#   mtty   (4348:3253): 8250_pci binds it; loopback port echoes, socket port talks to the host.
# The host waits for "E2E-SYNC drawn", takes the snapshots, then answers on the mtty console.

e2e_info "pci devices (bdf id class driver):"
pci_devices

# --- mbochs ---------------------------------------------------------------------------------
MBOCHS_COLOUR=$(e2e_arg mbochs_colour 0x00ff8000)
bochs=$(pci_find 1234:1111 | head -n1)
e2e_check mbochs-present test -n "$bochs"
load_module bochs
e2e_check mbochs-bound sh -c "test \"\$(basename \"\$(readlink $bochs/driver)\")\" = bochs-drm"
e2e_check mbochs-fb0 wait_for /dev/fb0 10
if [ -e /dev/fb0 ]; then
  size=$(cat /sys/class/graphics/fb0/virtual_size)   # "W,H"
  stride=$(cat /sys/class/graphics/fb0/stride)
  e2e_info "fb0: $(cat /sys/class/graphics/fb0/name) ${size} stride ${stride}"
  h=${size#*,}
  e2e_check mbochs-draw guest-pci fill-file /dev/fb0 0 $((stride * h)) "$MBOCHS_COLOUR"
fi

# --- mdpy -----------------------------------------------------------------------------------
MDPY_COLOUR=$(e2e_arg mdpy_colour 0x000000ff)
mdpy=$(pci_find 1b36:000f | head -n1)
e2e_check mdpy-present test -n "$mdpy"
if [ -n "$mdpy" ]; then
  bdf=${mdpy##*/}
  bar0=$(head -n1 "$mdpy/resource")          # "start end flags"
  set -- $bar0
  len=$(( $2 - $1 + 1 ))
  e2e_info "mdpy $bdf BAR0 $1 ($len bytes)"
  e2e_check mdpy-enable guest-pci enable "$bdf"
  e2e_check mdpy-draw guest-pci fill "$bdf" 0 0 "$len" "$MDPY_COLOUR"
  e2e_check mdpy-readback sh -c "test \"\$(guest-pci read32 $bdf 0 0x100)\" = \"$(printf '%#010x' "$MDPY_COLOUR")\""
fi

# --- mtty -----------------------------------------------------------------------------------
mtty=$(pci_find 4348:3253 | head -n1)
if [ "$(e2e_arg mtty 0)" = 1 ]; then
  e2e_check mtty-present test -n "$mtty"
  e2e_check mtty-bound sh -c "test \"\$(basename \"\$(readlink $mtty/driver)\")\" = serial"
  ports=""
  for t in /sys/class/tty/ttyS*; do
    dev=$(readlink -f "$t/device" 2>/dev/null) || continue
    case "$dev" in "$(readlink -f "$mtty")"*) ports="$ports ${t##*/}" ;; esac
  done
  set -- $ports
  e2e_info "mtty ports:$ports"
  e2e_check mtty-two-ports test $# -eq 2
  loop=/dev/$1 sock=/dev/$2
  # Port 0 loops back: what the guest writes comes back to it.
  stty -F "$loop" raw -echo 115200
  cat "$loop" > /tmp/loop.out &
  reader=$!
  echo "loopback-$$-ok" > "$loop"
  sleep 1
  kill "$reader" 2>/dev/null
  e2e_check mtty-loopback grep -q "loopback-$$-ok" /tmp/loop.out
  # Port 1 is a UNIX-socket console on the host: say hello, wait for the host's answer.
  stty -F "$sock" raw -echo 115200
  echo "hello-from-guest" > "$sock"
fi

echo "E2E-SYNC drawn"
if [ -n "${sock:-}" ]; then
  # The host answers on the console once it has checked the displays.
  answer=$(timeout 60 head -n1 "$sock" | tr -d '\r')
  e2e_check mtty-host-answer test "$answer" = "host-says-done"
else
  sleep "$(e2e_arg hold 10)"
fi
