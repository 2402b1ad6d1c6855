# Guest body for tests/e2e/devices: the sample devices served over vfio-user, seen and driven
# by a stock Linux guest. The host and the guest talk over the mtty socket port (fd 3 below),
# so every step of the conversation also exercises the serial card both ways:
#   guest: fbcon text on the mbochs display        -> "fbcon-ready"
#   host:  snapshot (a second client of mbochs),
#          VNC capture = snapshot, a VNC watcher   -> "next"
#   guest: scrolls fbcon for 3 s (the watcher counts updates),
#          fills the mbochs fb, paints mdpy        -> "drawn"
#   host:  snapshots of both, checked              -> "done"
# Kernel arguments: e2e.mbochs_colour, e2e.mdpy_top, e2e.mdpy_bottom (0x00RRGGBB).

e2e_info "pci devices (bdf id class driver):"
pci_devices

# --- identities -----------------------------------------------------------------------------
bochs=$(pci_find 1234:1111 | head -n1)
mdpy=$(pci_find 1b36:000f | head -n1)
mtty=$(pci_find 4348:3253 | head -n1)
e2e_check mbochs-present test -n "$bochs"
e2e_check mdpy-present test -n "$mdpy"
e2e_check mtty-present test -n "$mtty"

# --- mtty: 8250_pci binds it and makes two ttyS ports ---------------------------------------
e2e_check mtty-bound bound_to "$mtty" serial
ports=$(pci_ttys "$mtty" | tr '\n' ' ')
set -- $ports
e2e_info "mtty ports:$ports"
e2e_check mtty-two-ports test $# -eq 2
loop=$1 sock=$2

# Port 0 loops back: what the guest writes comes back to it (the port stays open throughout,
# so nothing is lost between the write and the read).
stty -F "$loop" raw -echo 115200
exec 4<>"$loop"
echo "loopback-$$-ok" >&4
line=""
read -t 10 line <&4 || true
exec 4>&-
e2e_check mtty-loopback test "$(echo "$line" | tr -d '\r')" = "loopback-$$-ok"

# Port 1 is a UNIX-socket console on the host: keep it open for the whole conversation.
stty -F "$sock" raw -echo 115200
exec 3<>"$sock"
say() { echo "$1" >&3; }
hear() {
  _want=$1
  while read -t 90 _line <&3; do
    _line=$(echo "$_line" | tr -d '\r')
    [ "$_line" = "$_want" ] && return 0
    e2e_info "console: unexpected '$_line'"
  done
  return 1
}

# --- mbochs: bochs-drm binds, sets a mode, fbcon draws text ---------------------------------
load_module bochs
e2e_check mbochs-bound bound_to "$bochs" bochs-drm
e2e_check mbochs-fb0 wait_for /dev/fb0 10
i=0
while [ $i -lt 30 ]; do
  echo "vfio-user mbochs end-to-end: fbcon line $i ##########################" > /dev/tty1
  i=$((i + 1))
done
# A steady picture for the host to compare a VNC capture with: no blinking cursor.
echo 0 > /sys/class/graphics/fbcon/cursor_blink || e2e_info "fbcon: cursor_blink not settable"
say fbcon-ready
e2e_check mtty-host-to-guest hear next

# fbcon scrolls for about 3 s while a VNC viewer on the host counts the updates it gets.
end=$(( $(date +%s) + 3 ))
n=0
while [ "$(date +%s)" -lt "$end" ]; do
  for _ in 1 2 3 4 5; do
    echo "vfio-user mbochs end-to-end: scrolling fbcon, line $n ##################" > /dev/tty1
    n=$((n + 1))
  done
done
e2e_info "fbcon: $n lines written in 3 s"

# After the host's snapshot client came and went, the display must keep updating.
size=$(cat /sys/class/graphics/fb0/virtual_size)   # "W,H"
stride=$(cat /sys/class/graphics/fb0/stride)
e2e_info "fb0: $(cat /sys/class/graphics/fb0/name) ${size} stride ${stride}"
e2e_check mbochs-draw guest-pci fill-file /dev/fb0 0 $((stride * ${size#*,})) "$(e2e_arg mbochs_colour)"

# --- mdpy: no guest driver; paint BAR0 through sysfs, top half and bottom half --------------
bdf=${mdpy##*/}
cfg32() { hexdump -s "$1" -n 4 -e '1/4 "%u"' "$mdpy/config"; }
width=$(cfg32 0x48) height=$(cfg32 0x4c)     # the mode mdpy advertises in its config space
e2e_info "mdpy $bdf mode ${width}x${height}, BAR0 $(head -n1 "$mdpy/resource" | cut -d' ' -f1)"
e2e_check mdpy-enable guest-pci enable "$bdf"
half=$(( width * 4 * (height / 2) ))
top=$(e2e_arg mdpy_top) bottom=$(e2e_arg mdpy_bottom)
e2e_check mdpy-draw sh -c "guest-pci fill $bdf 0 0 $half $top && guest-pci fill $bdf 0 $half $half $bottom"
e2e_check mdpy-readback test "$(guest-pci read32 "$bdf" 0 $((half + 4096)))" = "$(printf '%#010x' "$bottom")"

say drawn
e2e_check mtty-host-answer hear done
exec 3>&-

# The serial card interrupted the guest: the 8250 driver did not fall back to polling.
irqs=$(grep -E 'ttyS|serial' /proc/interrupts | awk '{ n = 0; for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) n += $i; s += n } END { print s + 0 }')
e2e_info "serial interrupts: $irqs"
e2e_check mtty-interrupts test "$irqs" -gt 0
