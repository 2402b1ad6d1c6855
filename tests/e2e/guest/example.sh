# Guest body for tests/e2e/example: the framework's doorbell example device is seen by the
# guest and its scratch register keeps what the guest writes.
d=$(pci_find 1b36:00ee | head -n1)
e2e_check doorbell-present test -n "$d"
guest-pci enable ${d##*/}
guest-pci write32 ${d##*/} 0 0 0xcafef00d
e2e_check doorbell-scratch test "$(guest-pci read32 ${d##*/} 0 0)" = 0xcafef00d
