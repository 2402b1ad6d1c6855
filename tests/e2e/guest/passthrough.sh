# Guest body for tests/e2e/passthrough: two QEMU `edu` functions behind one PCI bridge, an
# emulated IOMMU; the guest binds both to vfio-pci, serves them with `pci-passthrough serve`
# and drives them over vfio-user with `edu-client`:
#   - the server reports both functions in ONE device set (their shared secondary-bus reset);
#   - it holds no device fd of an idle function: vfio-pci runtime-suspends both while served
#     and idle, the one a client holds is active (its sibling stays suspended), and it is
#     suspended again once its last client has left;
#   - per function: config id, bus master, BAR0 ident, liveness, factorial, MSI on an eventfd,
#     a DMA round trip through the (guest's) IOMMU into the client's memory, and no fd with
#     BAR0's region info (the default trust: BAR0 is mmap-able on the host but served trapped);
#   - reset rules: with the sibling held open by another client, the set's hot reset is refused
#     (EBUSY); when that client goes the idle set is hot reset; then a request is done (hot);
#   - the server exits 0 on SIGTERM and logs no panic, and says it used the group path and
#     the default trust for each function;
#   - the opt-in: a server started with --trusted-client-mmap logs the grant, and its client
#     receives the host VFIO device fd with BAR0's region info and reads BAR0 through its own
#     mapping of it (every other check passes too);
#   - then `pci-passthrough bench` prints a BAR read timed directly on the VFIO fd and through
#     passthrough, default vs --trusted-client-mmap side by side (figures only).

EDU_ID=1234:11e8
PT_DIR=/run/pt
PT_TRUSTED_DIR=/run/pt-trusted
CHECKS="config-id bus-master ident liveness factorial msi dma"

e2e_info "pci devices (bdf id class driver):"
pci_devices

# --- both edu functions on vfio-pci ---------------------------------------------------------
set -- $(pci_find "$EDU_ID")
e2e_check edu-two-present test $# -eq 2
[ $# -eq 2 ] || exit 1
a=${1##*/} b=${2##*/}
e2e_info "edu functions: $a $b, IOMMU groups $(basename "$(readlink "$1/iommu_group")") $(basename "$(readlink "$2/iommu_group")")"
load_module vfio_iommu_type1
e2e_check edu-a-vfio-bound bind_vfio "$a"
e2e_check edu-b-vfio-bound bind_vfio "$b"
group=$(basename "$(readlink "/sys/bus/pci/devices/$a/iommu_group")")
e2e_check vfio-group-node wait_for "/dev/vfio/$group" 10

# --- the server -----------------------------------------------------------------------------
pci-passthrough serve --dir "$PT_DIR" "$a" "$b" >/tmp/pt.out 2>/tmp/pt.err &
server=$!
sock_a=$PT_DIR/$a.sock sock_b=$PT_DIR/$b.sock
both_listed() { [ "$(grep -c ' set=' /tmp/pt.out)" -ge 2 ]; }
wait_listed() { _t=100; while ! both_listed && [ $_t -gt 0 ]; do sleep 0.1; _t=$((_t - 1)); done; both_listed; }
if ! wait_listed || [ ! -S "$sock_a" ] || [ ! -S "$sock_b" ]; then
  e2e_fail server-listening "sockets not up; stdout: $(tr '\n' ' ' </tmp/pt.out) stderr: $(tail -n 5 /tmp/pt.err | tr '\n' ' ')"
  exit 1
fi
e2e_pass server-listening
e2e_info "server: $(tr '\n' ';' </tmp/pt.out)"
# Lines are "ADDRESS SOCKET set=KEY": one key for both, naming both functions.
key_a=$(grep "^$a " /tmp/pt.out | sed -n 's/.* set=//p')
key_b=$(grep "^$b " /tmp/pt.out | sed -n 's/.* set=//p')
e2e_info "set keys: $a -> '$key_a', $b -> '$key_b'"
e2e_check one-device-set test -n "$key_a" -a "$key_a" = "$key_b"
e2e_check set-key-names-both sh -c "case ',$key_a,' in *,$a,*) ;; *) exit 1 ;; esac; case ',$key_a,' in *,$b,*) ;; *) exit 1 ;; esac"

# --- runtime PM: the server holds no device fd of an idle function --------------------------
# vfio-pci enables a function on its device fd's first open and drops its runtime-PM
# reference on the last close, so an idle function may be runtime-suspended. The server opens
# the fd on a client's first open and releases it on the last close.
pm() { cat "/sys/bus/pci/devices/$1/power/runtime_status" 2>/dev/null; }
# pm_becomes BDF STATUS: within 5 s.
pm_becomes() {
  _t=50
  while [ "$(pm "$1")" != "$2" ] && [ $_t -gt 0 ]; do sleep 0.1; _t=$((_t - 1)); done
  [ "$(pm "$1")" = "$2" ]
}
e2e_info "runtime PM: power/control $(cat "/sys/bus/pci/devices/$a/power/control") $(cat "/sys/bus/pci/devices/$b/power/control"); served and idle: $a $(pm "$a"), $b $(pm "$b")"
e2e_check pm-idle-a-suspended pm_becomes "$a" suspended
e2e_check pm-idle-b-suspended pm_becomes "$b" suspended

# Default trust, said for each function: protocol replies only, BARs trapped.
e2e_check server-default-trust-logged sh -c \
  "grep -q '$a: client trust protocol-only (default): clients receive protocol replies only, no host fd' /tmp/pt.err &&
   grep -q '$b: client trust protocol-only (default): clients receive protocol replies only, no host fd' /tmp/pt.err"

# --- every check through vfio-user, one function after the other ------------------------------
# run_client TAG SOCKET FD_CHECK [EDU_CLIENT_ARGS...]: edu-client's PASS/FAIL lines become
# pt-TAG-<check> markers, for every device check and FD_CHECK (what came with BAR0's info).
run_client() {
  _tag=$1 _sock=$2 _fd_check=$3
  shift 3
  edu-client vfio-user "$@" "$_sock" >/tmp/client-$_tag.out 2>&1; _rc=$?
  sed "s/^/E2E-INFO edu-client $_tag: /" /tmp/client-$_tag.out
  for _c in $CHECKS $_fd_check; do
    e2e_check "pt-$_tag-$_c" grep -q "^PASS $_c: " /tmp/client-$_tag.out
  done
  e2e_check "pt-$_tag-client-exit" test "$_rc" -eq 0
}
run_client a "$sock_a" bar0-no-host-fd
run_client b "$sock_b" bar0-no-host-fd

# --- reset rules: the two functions share one hot reset ---------------------------------------
edu-client hold "$sock_b" >/tmp/hold.out 2>&1 &
holder=$!
holding() { grep -q '^HOLD ' /tmp/hold.out; }
_t=100; while ! holding && [ $_t -gt 0 ]; do sleep 0.1; _t=$((_t - 1)); done
e2e_check hold-b-open holding
e2e_info "runtime PM, a client holding the second: $a $(pm "$a"), $b $(pm "$b")"
e2e_check pm-held-b-active test "$(pm "$b")" = active
e2e_check pm-sibling-a-suspended pm_becomes "$a" suspended
e2e_check reset-a-busy-while-b-held edu-client reset "$sock_a" --expect busy
# log_since N PATTERN [SECS]: wait until server log lines after line N match PATTERN.
log_since() {
  _t=$(( ${3:-5} * 10 ))
  while ! tail -n +"$(($1 + 1))" /tmp/pt.err | grep -q "$2" && [ $_t -gt 0 ]; do
    sleep 0.1; _t=$((_t - 1))
  done
  tail -n +"$(($1 + 1))" /tmp/pt.err | grep -q "$2"
}
mark=$(wc -l </tmp/pt.err)
kill "$holder"; wait "$holder" 2>/dev/null
# The last close in the set (the holder's, or the refused client's if the server sees that
# one later) finds the set idle and hot resets it: the kernel's try-bus-reset rule.
e2e_check idle-set-reset-on-last-close log_since "$mark" ": reset (Hot"
e2e_check pm-released-b-suspended pm_becomes "$b" suspended
e2e_info "runtime PM after the last client left: $a $(pm "$a"), $b $(pm "$b")"
mark=$(wc -l </tmp/pt.err)
e2e_check reset-a-ok-after-release edu-client reset "$sock_a" --expect ok
# The request itself was served by a hot reset of the set (edu has no FLR); the client's
# own close may log another one, so look at the line just before the framework's.
hot_for_request() {
  tail -n +"$(($1 + 1))" /tmp/pt.err | grep -B1 "$a: device reset by conn" | grep -q "$a: reset (Hot"
}
e2e_check reset-a-was-hot-reset hot_for_request "$mark"

# --- the server stops cleanly -------------------------------------------------------------------
kill -TERM "$server"
_t=100; while kill -0 "$server" 2>/dev/null && [ $_t -gt 0 ]; do sleep 0.1; _t=$((_t - 1)); done
kill -0 "$server" 2>/dev/null && { e2e_fail server-stops "still running 10 s after SIGTERM"; kill -9 "$server"; }
wait "$server"; rc=$?
e2e_check server-exit-0 test "$rc" -eq 0
sed 's/^/E2E-INFO server: /' /tmp/pt.err
e2e_check server-no-panic sh -c "! grep -q panicked /tmp/pt.err"
e2e_check server-no-failed-reset sh -c "! grep -q 'reset of the idle set failed\|reset on close:\|clearing bus master:' /tmp/pt.err"
e2e_check server-group-path-logged grep -q "$a: VFIO group .*: using the group + type1 container path" /tmp/pt.err
e2e_info "vfio access: $(grep -h ': VFIO group\|: VFIO no group' /tmp/pt.err | sed 's/.*\] //' | tr '\n' ';')"

# --- the opt-in: --trusted-client-mmap hands the client the host VFIO device fd ----------------
pci-passthrough serve --trusted-client-mmap --dir "$PT_TRUSTED_DIR" "$a" \
  >/tmp/ptt.out 2>/tmp/ptt.err &
tserver=$!
trusted_listed() { grep -q "^$a .* set=" /tmp/ptt.out; }
_t=100; while ! trusted_listed && [ $_t -gt 0 ]; do sleep 0.1; _t=$((_t - 1)); done
e2e_check trusted-server-listening trusted_listed
e2e_check trusted-grant-logged grep -q \
  "$a: client trust trusted-client-mmap (opt-in): every client receives the host VFIO device fd with the region info of BAR0" \
  /tmp/ptt.err
run_client trusted-a "$PT_TRUSTED_DIR/$a.sock" bar0-host-fd-granted --expect-bar0-fd granted
kill -TERM "$tserver"
_t=100; while kill -0 "$tserver" 2>/dev/null && [ $_t -gt 0 ]; do sleep 0.1; _t=$((_t - 1)); done
kill -0 "$tserver" 2>/dev/null && { e2e_fail trusted-server-stops "still running 10 s after SIGTERM"; kill -9 "$tserver"; }
wait "$tserver"; rc=$?
sed 's/^/E2E-INFO trusted server: /' /tmp/ptt.err
e2e_check trusted-server-exit-0 test "$rc" -eq 0
e2e_check trusted-server-no-panic sh -c "! grep -q panicked /tmp/ptt.err"

# --- benchmark: a BAR read, directly on the VFIO device fd vs through passthrough -------------
# The servers are gone, so the group is free: `bench` opens the function itself, times reads
# of the edu identification register (BAR0+0) on the device fd, then serves it and times the
# same read by a vfio-user client: once with the default trust (trapped), once with
# --trusted-client-mmap (trapped, and through the client's own mapping of the granted fd).
# Figures are printed (E2E-INFO bench:), never judged: TCG timing.
pci-passthrough bench --dir /run/pt-bench --iterations "${BENCH_READS:-10000}" "$a" \
  >/tmp/bench.out 2>/tmp/bench.err; _rc=$?
sed 's/^/E2E-INFO bench: /' /tmp/bench.out
[ "$_rc" -eq 0 ] || sed 's/^/E2E-INFO bench stderr: /' /tmp/bench.err
e2e_check bench-ran sh -c "[ $_rc -eq 0 ] && grep -q 'trapped REGION_READ through passthrough' /tmp/bench.out"
e2e_check bench-default-no-fd grep -q 'default (protocol only) *host fd to client: none ' /tmp/bench.out
e2e_check bench-trusted-fd-granted grep -q -e '--trusted-client-mmap *host fd to client: granted ' /tmp/bench.out
