# Guest body for ./demo: bring up the sample devices the way a user would see them, then hand
# the mtty console (port 0, the kernel's console=) to the person at the host terminal.
mtty=$(pci_find 4348:3253 | head -n1)
bochs=$(pci_find 1234:1111 | head -n1)
mdpy=$(pci_find 1b36:000f | head -n1)
con=$(pci_ttys "$mtty" | head -n1)
[ -n "$con" ] || { e2e_fail demo-console "no mtty port found"; exit 1; }
stty -F "$con" sane 115200 2>/dev/null
out() { echo "$*" > "$con"; }

out ""
out "=== vfio-user mediated devices demo: this is the guest's mtty port ${con#/dev/} ==="
out "PCI functions the guest sees:"
for d in $mtty $bochs $mdpy; do
  out "  ${d##*/}  $(cat "$d/vendor" | cut -c3-):$(cat "$d/device" | cut -c3-)  driver=$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)"
done

# mbochs: the stock bochs DRM driver and fbcon; a banner on the display.
load_module bochs && wait_for /dev/fb0 10
if [ -e /dev/fb0 ]; then
  {
    echo "  vfio-user mbochs: this framebuffer lives in a userspace process on the host."
    echo "  Guest driver: bochs-drm, $(cat /sys/class/graphics/fb0/virtual_size | tr , x)."
    echo
    uname -a
    echo
    cat /proc/cpuinfo | grep -m1 "model name"
    free
  } > /dev/tty1
  out "mbochs: bochs-drm bound, fbcon on $(cat /sys/class/graphics/fb0/virtual_size | tr , x)"
fi

# mdpy: no guest driver; paint eight colour bars straight into its framebuffer BAR.
if [ -n "$mdpy" ]; then
  cfg32() { hexdump -s "$1" -n 4 -e '1/4 "%u"' "$mdpy/config"; }
  w=$(cfg32 0x48) h=$(cfg32 0x4c)
  guest-pci enable "${mdpy##*/}"
  band=$(( w * 4 * (h / 8) ))
  i=0
  for c in 0x00ffffff 0x00ffff00 0x0000ffff 0x0000ff00 0x00ff00ff 0x00ff0000 0x000000ff 0x00202020; do
    guest-pci fill "${mdpy##*/}" 0 $((i * band)) "$band" "$c"
    i=$((i + 1))
  done
  out "mdpy: colour bars painted into BAR0 (${w}x${h})"
fi

if [ "$(e2e_arg demo_auto 0)" = 1 ]; then
  out "(non-interactive run: showing a few commands, then powering off)"
  for cmd in "cat /proc/interrupts" "ls -l /sys/bus/pci/drivers/serial /sys/bus/pci/drivers/bochs-drm"; do
    out "# $cmd"
    sh -c "$cmd" > "$con" 2>&1
  done
  sleep 3
else
  out "A shell follows on this serial port. Type 'exit' to power the guest off (Ctrl-] quits at once)."
  setsid sh -c "exec sh -i <$con >$con 2>&1"
fi
out "guest: powering off"
