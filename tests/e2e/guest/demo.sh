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

# The displays get their consoles from fbcon (booted with fbcon=map:01): tty1 on the first
# framebuffer (mbochs, bochs-drm), tty2 on the second (mdpy, the project's mdpy-fb driver).
# fbcon draws the foreground console only; each display keeps its last picture.
fbdev_of() { # PCI_SYSFS_DIR -> fbN registered for it (empty when none)
  for f in /sys/class/graphics/fb*; do
    [ "$(readlink -f "$f/device" 2>/dev/null)" = "$(readlink -f "$1")" ] && { echo "${f##*/}"; return; }
  done
}
banner() { # TTY DEVICE-LINE DRIVER-LINE FB
  echo 0 >/sys/class/graphics/fbcon/cursor_blink 2>/dev/null
  chvt "${1#/dev/tty}"
  {
    printf '\033[2J\033[H'
    echo "  $2"
    echo "  $3, fbcon on $4 $(cat "/sys/class/graphics/$4/virtual_size" | tr , x), console ${1#/dev/}."
    echo
    uname -a
    echo
    grep -m1 "model name" /proc/cpuinfo
    free
    echo
    echo "/proc/fb:"; cat /proc/fb
  } > "$1"
}

# mbochs: the stock bochs DRM driver and fbcon.
load_module bochs && wait_for /dev/fb0 10
fb=$(fbdev_of "$bochs")
if [ -n "$fb" ]; then
  banner /dev/tty1 "vfio-user mbochs: this framebuffer lives in a userspace process on the host." \
    "Guest driver: bochs-drm" "$fb"
  out "mbochs: bochs-drm bound, fbcon on $(cat /sys/class/graphics/$fb/virtual_size | tr , x)"
fi

# mdpy: the project's own guest driver, mdpy-fb (distribution kernels ship none).
if [ -n "$mdpy" ] && load_module mdpy_fb; then
  fb=$(fbdev_of "$mdpy")
  if [ -n "$fb" ]; then
    banner /dev/tty2 "vfio-user mdpy: a simple display served by a userspace process on the host." \
      "Guest driver: mdpy-fb (tests/guest/mdpy-fb)" "$fb"
    out "mdpy: mdpy-fb bound, fbcon on $fb $(cat /sys/class/graphics/$fb/virtual_size | tr , x) (tty2)"
  else
    out "mdpy: mdpy-fb loaded but registered no framebuffer: $(dmesg | grep mdpy-fb | tail -n1)"
  fi
fi

if [ "$(e2e_arg demo_auto 0)" = 1 ]; then
  out "(non-interactive run: showing a few commands, then powering off)"
  for cmd in "cat /proc/interrupts" "ls -l /sys/bus/pci/drivers/serial /sys/bus/pci/drivers/bochs-drm /sys/bus/pci/drivers/mdpy-fb" "cat /proc/fb"; do
    out "# $cmd"
    sh -c "$cmd" > "$con" 2>&1
  done
  sleep 3
else
  out "A shell follows on this serial port. Type 'exit' to power the guest off (Ctrl-] quits at once)."
  setsid sh -c "exec sh -i <$con >$con 2>&1"
fi
out "guest: powering off"
