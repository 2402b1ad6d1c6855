# Guest body for tests/e2e/mdpy-fb: the project's mdpy-fb driver makes mdpy a real display.
# Attached (addresses fixed by the host): 00:04.0 mdpy vga, 00:05.0 mdpy xga, 00:06.0 mdpy hd,
# 00:07.0 mdpy-misfit (reports 1920x1080, has a 4 MiB BAR0). Booted with fbcon=map:012, so
# fbN carries ttyN+1. The host checks pictures on request over ttyS1 (run_guest --serial2):
#   guest: "text BDF CRC"     host: snapshot shows console text, CRC = the guest's crc32 of fbN
#   guest: "paint BDF"        host: snapshot is all the paint colour (the driver is unbound)
#   guest: "rebound BDF CRC"  host: console text again, no paint left, CRC equal
#   guest: "done"
# and answers "ok" or what failed.
GOOD="0000:00:04.0 0000:00:05.0 0000:00:06.0"
MISFIT=0000:00:07.0
PAINT=0x00123456
DRV=/sys/bus/pci/drivers/mdpy-fb

stty -F /dev/ttyS1 raw -echo 115200
exec 3<>/dev/ttyS1
# ask REQUEST...: the host's verdict on the picture; true when it answers "ok".
ask() {
  echo "$*" >&3
  _ans=""
  read -t 60 _ans <&3
  _ans=$(echo "$_ans" | tr -d '\r')
  [ "$_ans" = ok ] || { echo "host: ${_ans:-no answer}"; return 1; }
}

# fb_of BDF: the fbN the function's driver registered (empty when none).
fb_of() {
  for _f in /sys/class/graphics/fb*; do
    [ -e "$_f/device" ] || continue
    [ "$(basename "$(readlink -f "$_f/device")")" = "$1" ] && { echo "${_f##*/}"; return 0; }
  done
  return 0
}
mdpy_fbs() { grep -c ' mdpy$' /proc/fb; }
fbcon_bound() {
  for _v in /sys/class/vtconsole/vtcon*; do
    grep -q "frame buffer device" "$_v/name" && [ "$(cat "$_v/bind")" = 1 ] && return 0
  done
  return 1
}

# show BDF TAG: write text on the console that fbcon shows on BDF's framebuffer (fbN -> ttyN+1),
# make it the visible one, and print that framebuffer's crc32 (what the host must see).
show() {
  _fb=$(fb_of "$1")
  [ -n "$_fb" ] || { echo "no framebuffer for $1" >&2; return 1; }
  _tty=/dev/tty$(( ${_fb#fb} + 1 ))
  chvt $(( ${_fb#fb} + 1 ))
  # Cursor off (it would blink into the picture), clear, then text.
  printf '\033[?25l\033[2J\033[H' >"$_tty"
  _mode=$(cat "/sys/class/graphics/$_fb/virtual_size" | tr , x)
  _i=0
  while [ $_i -lt 20 ]; do
    echo "mdpy-fb $2: $1 $_fb $_mode on ${_tty#/dev/}, fbcon line $_i ##########" >"$_tty"
    _i=$((_i + 1))
  done
  crc32 <"/dev/$_fb"
}

# --- four functions, the driver loads and binds the three real ones ------------------------
e2e_check mdpy-four-functions test "$(pci_find 1b36:000f | wc -l)" -eq 4
e2e_check mdpyfb-load load_module mdpy_fb
for b in $GOOD; do
  e2e_check "bound-$b" bound_to "/sys/bus/pci/devices/$b" mdpy-fb
  e2e_check "fb-$b" test -n "$(fb_of "$b")"
done
e2e_info "/proc/fb: $(tr '\n' ';' </proc/fb)"
e2e_check proc-fb-three test "$(mdpy_fbs)" -eq 3
e2e_check fbcon-bound fbcon_bound

# --- the misfit: refused with a clear line, nothing registered -----------------------------
e2e_check misfit-unbound test ! -e "/sys/bus/pci/devices/$MISFIT/driver"
e2e_check misfit-no-fb test -z "$(fb_of "$MISFIT")"
e2e_info "misfit: $(dmesg | grep "$MISFIT" | grep mdpy-fb | tr '\n' ' ')"
e2e_check misfit-logged sh -c "dmesg | grep -qF 'mdpy-fb $MISFIT: mode 1920x1080 XRGB8888 needs 8294400 bytes but BAR0 has only 4194304: refusing to map past BAR0'"

# --- console text on each type, seen by the host --------------------------------------------
echo 0 >/sys/class/graphics/fbcon/cursor_blink
for b in $GOOD; do
  if crc=$(show "$b" text); then e2e_check "text-$b" ask text "$b" "$crc"; else e2e_fail "text-$b" "could not draw"; fi
done

# --- unbind and rebind the vga function -----------------------------------------------------
b=${GOOD%% *}
echo "$b" >"$DRV/unbind"
e2e_check unbind-no-driver test ! -e "/sys/bus/pci/devices/$b/driver"
e2e_check unbind-proc-fb test "$(mdpy_fbs)" -eq 2
e2e_check unbind-fbcon-stays fbcon_bound
# Unbound, nobody draws there: paint the whole picture through sysfs, the host sees only that.
cfg32() { hexdump -s "$2" -n 4 -e '1/4 "%u"' "/sys/bus/pci/devices/$1/config"; }
bytes=$(( $(cfg32 "$b" 0x48) * $(cfg32 "$b" 0x4c) * 4 ))
e2e_check unbind-paint sh -c "guest-pci enable $b && guest-pci fill $b 0 0 $bytes $PAINT"
e2e_check paint-seen ask paint "$b"
echo "$b" >"$DRV/bind"
e2e_check rebind-driver bound_to "/sys/bus/pci/devices/$b" mdpy-fb
e2e_check rebind-proc-fb test "$(mdpy_fbs)" -eq 3
# At unbind fbcon moved tty1 to another framebuffer and keeps it there: a framebuffer that comes
# back carries no console until one is mapped to it, as `con2fbmap 1 N` does.
fb=$(fb_of "$b")
e2e_check rebind-con2fb guest-pci con2fb $(( ${fb#fb} + 1 )) "${fb#fb}"
if crc=$(show "$b" rebound); then e2e_check rebind-text ask rebound "$b" "$crc"; else e2e_fail rebind-text "could not draw"; fi

echo done >&3
exec 3>&-
