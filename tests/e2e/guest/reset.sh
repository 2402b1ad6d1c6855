# Guest body of tests/e2e/lifecycle, reset phase: mtty (mtty-2: port 0 loops back, port 1 is
# the host's socket console), mbochs and mdpy attached from the start; QEMU runs with
# `-action reboot=reset`, so this body runs again after every reset of the machine. Each run
# binds the drivers and checks they work (loopback echo, fbcon text, mdpy's framebuffer),
# says "up" on the console, then does what the host says:
#   dirty   leave non-reset state behind for the host to see cleared by the next reset:
#           port 0's scratch register and bytes in its receive FIFO (written through the I/O
#           BAR with the port closed, so no driver drains them); answers "dirtied LSR"
#   reboot  reboot -f (a guest-initiated reset)
#   off     power off
MTTY_ID=4348:3253 BOCHS_ID=1234:1111 MDPY_ID=1b36:000f
mtty=$(pci_find $MTTY_ID | head -n1)
bochs=$(pci_find $BOCHS_ID | head -n1)
mdpy=$(pci_find $MDPY_ID | head -n1)
e2e_check reset-present test -n "$mtty" -a -n "$bochs" -a -n "$mdpy"
e2e_check reset-mtty-bound bound_to "$mtty" serial
set -- $(pci_ttys "$mtty")
loop=$1 con=$2
e2e_check reset-mtty-ports test -n "$loop" -a -n "$con"

# Port 0 loops back.
stty -F "$loop" raw -echo 115200
exec 4<>"$loop"
echo "reset-$$-echo" >&4
line=""
read -t 10 line <&4
exec 4>&-
e2e_check reset-loopback test "$(echo "$line" | tr -d '\r')" = "reset-$$-echo"

# bochs-drm and fbcon draw on mbochs (the host takes a snapshot).
load_module bochs
e2e_check reset-bochs-bound bound_to "$bochs" bochs-drm
e2e_check reset-fb0 wait_for /dev/fb0 10
i=0
while [ $i -lt 30 ]; do
  echo "vfio-user lifecycle: reset and reboot, fbcon line $i ######################" >/dev/tty1
  i=$((i + 1))
done

# mdpy's framebuffer answers.
bdf=${mdpy##*/}
e2e_check reset-mdpy-enable guest-pci enable "$bdf"
e2e_check reset-mdpy-rw sh -c "guest-pci write32 $bdf 0 0 0x12345678 && test \$(guest-pci read32 $bdf 0 0) = 0x12345678"

stty -F "$con" raw -echo 115200
exec 3<>"$con"
echo up >&3
mbdf=${mtty##*/}
while read -t 170 cmd <&3; do
  cmd=$(echo "$cmd" | tr -d '\r')
  case "$cmd" in
    dirty)
      guest-pci io-write8 "$mbdf" 0 7 0x5a          # SCR
      for b in 0x41 0x42 0x43; do guest-pci io-write8 "$mbdf" 0 0 $b; done   # THR -> RX FIFO
      echo "dirtied $(guest-pci io-read8 "$mbdf" 0 5)" >&3   # LSR: DR set
      ;;
    reboot) exec 3>&-; reboot -f; sleep 30 ;;
    off) break ;;
    *) e2e_info "console: unexpected '$cmd'" ;;
  esac
done
exec 3>&-
