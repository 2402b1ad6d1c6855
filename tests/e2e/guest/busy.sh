# Guest body for the third boot of tests/e2e/devices: drive every device until QEMU is killed
# under it (the host sends SIGKILL after "E2E-SYNC busy").
bochs=$(pci_find 1234:1111 | head -n1)
mdpy=$(pci_find 1b36:000f | head -n1)
mtty=$(pci_find 4348:3253 | head -n1)
load_module bochs
wait_for /dev/fb0 10
guest-pci enable "${mdpy##*/}"
port=$(pci_ttys "$mtty" | head -n1)
stty -F "$port" raw -echo 115200
exec 3<>"$port"
echo "E2E-SYNC busy"
i=0
while :; do
  guest-pci write32 "${mdpy##*/}" 0 $(( (i % 1024) * 4 )) "$i"
  echo "tick $i" > /dev/tty1
  echo "tick $i" >&3
  i=$((i + 1))
done
