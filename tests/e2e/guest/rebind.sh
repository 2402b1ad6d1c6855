# Guest body for the second boot of tests/e2e/devices: a fresh QEMU attaches to the same
# instances after the first one exited; the stock drivers must bind them again.
bound_to() { test "$(basename "$(readlink "$1/driver")")" = "$2"; }
bochs=$(pci_find 1234:1111 | head -n1)
mdpy=$(pci_find 1b36:000f | head -n1)
mtty=$(pci_find 4348:3253 | head -n1)
e2e_check again-present test -n "$bochs" -a -n "$mdpy" -a -n "$mtty"
e2e_check again-mtty-bound bound_to "$mtty" serial
load_module bochs
e2e_check again-mbochs-bound bound_to "$bochs" bochs-drm
e2e_check again-mbochs-fb0 wait_for /dev/fb0 10
e2e_check again-mdpy-enable guest-pci enable "${mdpy##*/}"
e2e_check again-mdpy-rw sh -c "guest-pci write32 ${mdpy##*/} 0 0 0x12345678 && test \$(guest-pci read32 ${mdpy##*/} 0 0) = 0x12345678"
