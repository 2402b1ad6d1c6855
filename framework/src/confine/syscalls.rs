//! A set of allowed system calls, some of them only with given argument values, and its
//! translation into a seccomp-bpf program through `seccompiler`.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// One way a system call's arguments may look. Every argument checked here is an `int` or
/// `unsigned int` in the kernel, so only its low 32 bits are compared (the kernel ignores the
/// rest too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ArgRule {
    /// Argument `arg` equals `value`.
    Equals { arg: u8, value: u32 },
    /// Argument `arg` has none of the bits of `mask` set.
    Clear { arg: u8, mask: u32 },
    /// Argument `first.0` equals `first.1` and argument `second.0` equals `second.1`
    /// (`setsockopt` by level and option).
    Both { first: (u8, u32), second: (u8, u32) },
}

/// What a system call is allowed with.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Allowed {
    /// Any arguments.
    Always,
    /// Arguments matching at least one of the rules.
    When(Vec<ArgRule>),
}

/// System calls a thread may make. Built by adding calls; [`SyscallSet::union`] merges two
/// sets (a call allowed with any arguments in either is allowed with any arguments).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyscallSet {
    calls: BTreeMap<i64, Allowed>,
}

impl SyscallSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows each of `calls` with any arguments.
    pub fn allow(mut self, calls: &[libc::c_long]) -> Self {
        for &nr in calls {
            self.calls.insert(nr, Allowed::Always);
        }
        self
    }

    /// Allows `call` when its argument `arg` (0-based) is one of `values`.
    pub fn allow_arg(mut self, call: libc::c_long, arg: u8, values: &[u32]) -> Self {
        for &value in values {
            self.add_rule(call, ArgRule::Equals { arg, value });
        }
        self
    }

    /// Allows `call` when its arguments `args.0` and `args.1` are one of the pairs of
    /// `values` (both at once: `setsockopt` by level and option name).
    pub fn allow_arg_pairs(
        mut self,
        call: libc::c_long,
        args: (u8, u8),
        values: &[(u32, u32)],
    ) -> Self {
        for &(a, b) in values {
            self.add_rule(
                call,
                ArgRule::Both {
                    first: (args.0, a),
                    second: (args.1, b),
                },
            );
        }
        self
    }

    /// Allows `ioctl` with each of the request numbers `requests`.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the kernel's ioctl compares the request as an unsigned int: the low 32 bits"
    )]
    pub fn allow_ioctls(self, requests: &[libc::c_ulong]) -> Self {
        // The kernel's ioctl takes the request as an `unsigned int`.
        let low: Vec<u32> = requests.iter().map(|&r| r as u32).collect();
        self.allow_arg(libc::SYS_ioctl, 1, &low)
    }

    /// Allows `call` when its argument `arg` has none of the bits of `mask` (`mmap` and
    /// `mprotect` without `PROT_EXEC`).
    pub fn allow_without_bits(mut self, call: libc::c_long, arg: u8, mask: u32) -> Self {
        self.add_rule(call, ArgRule::Clear { arg, mask });
        self
    }

    fn add_rule(&mut self, call: libc::c_long, rule: ArgRule) {
        match self.calls.entry(call).or_insert(Allowed::When(Vec::new())) {
            Allowed::Always => {}
            Allowed::When(rules) => {
                if !rules.contains(&rule) {
                    rules.push(rule);
                    rules.sort_unstable();
                }
            }
        }
    }

    /// This set and `other`'s calls together.
    pub fn union(mut self, other: &SyscallSet) -> Self {
        for (&nr, allowed) in &other.calls {
            match allowed {
                Allowed::Always => {
                    self.calls.insert(nr, Allowed::Always);
                }
                Allowed::When(rules) => {
                    for &r in rules {
                        self.add_rule(nr, r);
                    }
                }
            }
        }
        self
    }

    /// Whether `call` is allowed with some arguments.
    pub fn contains(&self, call: libc::c_long) -> bool {
        self.calls.contains_key(&call)
    }

    /// Whether `call` is allowed with any arguments.
    pub fn allows_any_arguments(&self, call: libc::c_long) -> bool {
        self.calls.get(&call) == Some(&Allowed::Always)
    }

    /// Number of distinct system calls in the set.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Whether every call (and argument rule) of `self` is also allowed by `other`.
    pub fn is_subset_of(&self, other: &SyscallSet) -> bool {
        self.calls
            .iter()
            .all(|(nr, allowed)| match (allowed, other.calls.get(nr)) {
                (_, Some(Allowed::Always)) => true,
                (Allowed::When(mine), Some(Allowed::When(theirs))) => {
                    mine.iter().all(|r| theirs.contains(r))
                }
                _ => false,
            })
    }

    /// The system call numbers in the set, ascending.
    pub fn numbers(&self) -> impl Iterator<Item = i64> + '_ {
        self.calls.keys().copied()
    }

    /// A BPF program that returns `otherwise` for every call this set does not allow.
    pub(super) fn compile(
        &self,
        otherwise: SeccompAction,
    ) -> Result<BpfProgram, seccompiler::BackendError> {
        let mut rules = BTreeMap::new();
        for (&nr, allowed) in &self.calls {
            let chain = match allowed {
                Allowed::Always => Vec::new(),
                Allowed::When(list) => list
                    .iter()
                    .map(|r| SeccompRule::new(conditions(*r)?))
                    .collect::<Result<Vec<_>, _>>()?,
            };
            rules.insert(nr, chain);
        }
        let filter = SeccompFilter::new(rules, otherwise, SeccompAction::Allow, target_arch())?;
        BpfProgram::try_from(filter)
    }
}

/// The conditions a rule stands for, all of which must hold.
fn conditions(rule: ArgRule) -> Result<Vec<SeccompCondition>, seccompiler::BackendError> {
    let equals = |arg, value: u32| {
        SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            u64::from(value),
        )
    };
    match rule {
        ArgRule::Equals { arg, value } => Ok(vec![equals(arg, value)?]),
        ArgRule::Clear { arg, mask } => Ok(vec![SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(u64::from(mask)),
            0,
        )?]),
        ArgRule::Both { first, second } => {
            Ok(vec![equals(first.0, first.1)?, equals(second.0, second.1)?])
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn target_arch() -> seccompiler::TargetArch {
    seccompiler::TargetArch::x86_64
}

#[cfg(target_arch = "aarch64")]
fn target_arch() -> seccompiler::TargetArch {
    seccompiler::TargetArch::aarch64
}

#[cfg(target_arch = "riscv64")]
fn target_arch() -> seccompiler::TargetArch {
    seccompiler::TargetArch::riscv64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_allowed_always_in_one_set_stays_always_in_the_union() {
        let a = SyscallSet::new().allow_ioctls(&[0x5401]);
        let b = SyscallSet::new().allow(&[libc::SYS_ioctl]);
        let u = a.clone().union(&b);
        assert!(u.allows_any_arguments(libc::SYS_ioctl));
        let u = b.union(&a);
        assert!(u.allows_any_arguments(libc::SYS_ioctl));
    }

    #[test]
    fn argument_rules_add_up_and_subsets_compare_them() {
        let tcgets = SyscallSet::new().allow_ioctls(&[0x5401]);
        let both = tcgets.clone().allow_ioctls(&[0x5402]);
        assert!(!both.allows_any_arguments(libc::SYS_ioctl));
        assert!(tcgets.is_subset_of(&both));
        assert!(!both.is_subset_of(&tcgets));
        assert!(both.is_subset_of(&SyscallSet::new().allow(&[libc::SYS_ioctl])));
        assert!(!SyscallSet::new()
            .allow(&[libc::SYS_ioctl])
            .is_subset_of(&both));
        assert_eq!(both.len(), 1);
    }

    #[test]
    fn argument_pairs_are_rules_of_their_own() {
        let nodelay = SyscallSet::new().allow_arg_pairs(libc::SYS_setsockopt, (1, 2), &[(6, 1)]);
        let both = nodelay
            .clone()
            .allow_arg_pairs(libc::SYS_setsockopt, (1, 2), &[(1, 21)]);
        assert!(nodelay.is_subset_of(&both));
        assert!(!both.is_subset_of(&nodelay));
        assert!(!both.allows_any_arguments(libc::SYS_setsockopt));
        assert!(both.compile(SeccompAction::Trap).unwrap().len() > 8);
    }

    #[test]
    fn sets_compile_to_a_program() {
        let set = SyscallSet::new()
            .allow(&[libc::SYS_read, libc::SYS_write])
            .allow_without_bits(libc::SYS_mmap, 2, libc::PROT_EXEC as u32)
            .allow_ioctls(&[0x5401, 0x5402]);
        let program = set.compile(SeccompAction::Trap).unwrap();
        assert!(program.len() > 8);
    }
}
