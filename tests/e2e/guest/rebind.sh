# Guest body for the second boot of tests/e2e/devices: a fresh QEMU attaches to the same
# instances after the first one exited; the stock drivers must bind them again, and bochs-drm
# takes the mode asked for on the kernel command line (video=...), which the host then sees.
bochs=$(pci_find 1234:1111 | head -n1)
mdpy=$(pci_find 1b36:000f | head -n1)
mtty=$(pci_find 4348:3253 | head -n1)
e2e_check again-present test -n "$bochs" -a -n "$mdpy" -a -n "$mtty"
e2e_check again-mtty-bound bound_to "$mtty" serial
load_module bochs
e2e_check again-mbochs-bound bound_to "$bochs" bochs-drm
e2e_check again-mbochs-fb0 wait_for /dev/fb0 10
# Text in the new mode, and a steady picture (no blinking cursor) for the host's VNC viewer
# to compare with a snapshot.
for i in 1 2 3 4 5 6 7 8; do
  echo "vfio-user mbochs end-to-end, second boot: fbcon at $(e2e_arg mode) line $i" > /dev/tty1
done
echo 0 > /sys/class/graphics/fbcon/cursor_blink || e2e_info "fbcon: cursor_blink not settable"
e2e_check again-mdpy-enable guest-pci enable "${mdpy##*/}"
e2e_check again-mdpy-rw sh -c "guest-pci write32 ${mdpy##*/} 0 0 0x12345678 && test \$(guest-pci read32 ${mdpy##*/} 0 0) = 0x12345678"
e2e_check again-mode test "$(cat /sys/class/graphics/fb0/virtual_size)" = "$(e2e_arg mode)"
e2e_check again-mtty-ports test "$(pci_ttys "$mtty" | wc -l)" -eq 2
sock=$(pci_ttys "$mtty" | tail -n1)
stty -F "$sock" raw -echo 115200
exec 3<>"$sock"
echo rebound >&3
answer=""
read -t 90 answer <&3 || true
e2e_check again-host-saw-mode test "$(echo "$answer" | tr -d '\r')" = ok
