# Guest body for the second boot of tests/e2e/devices: a fresh QEMU attaches to the same
# instances after the first one exited; the stock drivers must bind them again, and bochs-drm
# takes the mode asked for on the kernel command line (video=...), which the host then sees.
# Then, through the stock 8250 driver, e2e.xfer bytes of random data each way on the mtty
# console port against the host's serial-peer (which takes the console over from sock-chat);
# both ends' sha256 are compared by the host (XFER-SHA K SUM lines).
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

# Bulk transfer both ways (fd 3 stays open meanwhile, so the port stays up and raw).
xfer=$(e2e_arg xfer 16384)
head -c "$xfer" /dev/urandom >/tmp/g2h-1.bin
out=$(guest-pci serial-xfer "$sock" hello send:115200:/tmp/g2h-1.bin "recv:115200:$xfer:/tmp/h2g-2.bin" 2>&1)
rc=$?
echo "$out" | sed 's/^/XFER /'
if [ $rc -eq 0 ]; then e2e_pass again-mtty-xfer; else e2e_fail again-mtty-xfer "rc=$rc $(echo "$out" | tr '\n' ' ')"; fi
for k in 1 2; do
  f=$(ls /tmp/*-$k.bin 2>/dev/null) && echo "XFER-SHA $k $(sha256sum "$f" | cut -d' ' -f1)"
done
exec 3>&-
