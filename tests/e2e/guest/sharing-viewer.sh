# Guest body of the viewer phase of tests/e2e/sharing: bochs-drm binds mbochs (a periodic
# snapshot viewer is attached to the instance the whole time) and fbcon draws on it; then the
# guest parks until the host resets the machine (system_reset: the body runs again) or quits.
bochs=$(pci_find 1234:1111 | head -n1)
e2e_check viewer-mbochs-present test -n "$bochs"
load_module bochs
e2e_check viewer-bochs-drm bound_to "$bochs" bochs-drm
e2e_check viewer-fb0 wait_for /dev/fb0 10
fbcon_bound() {
  for v in /sys/class/vtconsole/vtcon*; do
    grep -q "frame buffer" "$v/name" && [ "$(cat "$v/bind")" = 1 ] && return 0
  done
  return 1
}
e2e_check viewer-fbcon fbcon_bound
i=0
while [ $i -lt 20 ]; do
  echo "vfio-user mbochs with a viewer attached: line $i ##########################" >/dev/tty1
  i=$((i + 1))
done
echo "E2E-SYNC viewer-up"
sleep 300   # parked: the host resets or quits the machine
