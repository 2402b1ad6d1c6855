# Guest body of guest A in tests/e2e/sharing: the first of two VMMs on one mtty-2 card. It
# keeps using the card for the whole test while a second QEMU (guest B) attaches to the same
# instance, boots, and leaves:
#   - port 0 (loopback) carries a loopback exchange without pause: a line out, the same line
#     back, read through the receive interrupt; every round is counted good or bad;
#   - port 1 (the host's UNIX-socket console, fd 3) carries the conversation with the host
#     and a heartbeat every 0.5 s: "a-tick K irq=N ok=X bad=Y" (N: the card's interrupts
#     counted in /proc/interrupts, X/Y: loopback rounds so far).
# Conversation:  guest "a-up" / host "hello" / guest "a-ready irq=N"
#                ... the host boots and stops guest B; ticks go on ...
#                host "b-gone" / guest: 20 more good rounds, none bad / "a-alive irq=N ok=X bad=Y"
#                host "done"

mtty=$(pci_find 4348:3253 | head -n1)
e2e_check a-mtty-present test -n "$mtty"
e2e_check a-mtty-bound bound_to "$mtty" serial
set -- $(pci_ttys "$mtty")
e2e_check a-mtty-two-ports test $# -eq 2
loop=$1 sock=$2
irq=$(cat "$mtty/irq")
# irqs: the card's interrupt count (every CPU column of its /proc/interrupts line).
irqs() {
  awk -v i="$irq:" '$1 == i { n = 0; for (k = 2; k <= NF && $k ~ /^[0-9]+$/; k++) n += $k; print n }' \
    /proc/interrupts
}

stty -F "$loop" raw -echo 115200
stty -F "$sock" raw -echo 115200
exec 3<>"$sock"
e2e_info "card $mtty, ports $loop $sock, irq $irq (requested at open): $(grep "^ *$irq:" /proc/interrupts)"
hear() {   # hear WORD SECS: wait for the line WORD from the host on the console port
  while read -t "$2" _line <&3; do
    _line=$(echo "$_line" | tr -d '\r')
    [ "$_line" = "$1" ] && return 0
    e2e_info "console: unexpected '$_line'"
  done
  return 1
}
echo a-up >&3
e2e_check a-host-hello hear hello 60 || exit 1

# Port 0: the loopback exchange, until /tmp/stop appears. State in /tmp/lb: "GOOD BAD".
echo "0 0" >/tmp/lb
(
  exec 4<>"$loop"
  ok=0 bad=0 n=0
  while [ ! -e /tmp/stop ]; do
    n=$((n + 1))
    echo "lb-$n" >&4
    l=""
    read -t 3 l <&4
    if [ "$(echo "$l" | tr -d '\r')" = "lb-$n" ]; then
      ok=$((ok + 1))
    else
      bad=$((bad + 1))
      e2e_info "loopback round $n at $(cut -d' ' -f1 /proc/uptime)s: got '$l'"
    fi
    echo "$ok $bad" >/tmp/lb.new && mv /tmp/lb.new /tmp/lb
  done
) &
lb_pid=$!
# Port 1: the heartbeat.
(
  k=0
  while [ ! -e /tmp/stop ]; do
    k=$((k + 1))
    set -- $(cat /tmp/lb)
    echo "a-tick $k irq=$(irqs) ok=$1 bad=$2" >&3
    sleep 0.5
  done
) &
tick_pid=$!
echo "a-ready irq=$(irqs)" >&3

# The host's signal that guest B came and went; it arrives through the receive interrupt.
e2e_check a-host-b-gone hear b-gone 180
good() { cut -d' ' -f1 /tmp/lb; }
from=$(good) i=0
while [ "$(good)" -lt $((from + 20)) ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
e2e_check a-loopback-after-b test "$(good)" -ge $((from + 20))
set -- $(cat /tmp/lb)
e2e_check a-loopback-never-failed test "$2" -eq 0
echo "a-alive irq=$(irqs) ok=$1 bad=$2" >&3
e2e_check a-host-done hear done 60
touch /tmp/stop
wait "$lb_pid" "$tick_pid"
e2e_info "card interrupts at the end: $(irqs); loopback good/bad: $(cat /tmp/lb)"
exec 3>&-
