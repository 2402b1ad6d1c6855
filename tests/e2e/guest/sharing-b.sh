# Guest body of guest B in tests/e2e/sharing: a second QEMU on the mtty-2 card guest A is
# using. Its 8250_pci probe runs on the shared card (QEMU B's DMA_MAPs, SET_IRQS and the
# DEVICE_RESET the server refuses all happen before this body starts). Then it tells the host
# (E2E-SYNC on its own console) and waits on a QEMU pci-serial control line for "b-quit".
mtty=$(pci_find 4348:3253 | head -n1)
ctl=$(pci_find 1b36:0002 | head -n1)
e2e_check b-mtty-present test -n "$mtty"
e2e_check b-mtty-bound bound_to "$mtty" serial
e2e_check b-mtty-two-ports test "$(pci_ttys "$mtty" | wc -l)" -eq 2
dmesg | grep "${mtty##*/}" | while read -r l; do e2e_info "dmesg: $l"; done
ctlt=$(pci_ttys "$ctl" | head -n1)
e2e_check b-control-line test -n "$ctlt" || exit 1
stty -F "$ctlt" raw -echo 115200
exec 5<>"$ctlt"
echo "E2E-SYNC b-up"
l=""
read -t 120 l <&5 || true
e2e_check b-released test "$(echo "$l" | tr -d '\r')" = b-quit
