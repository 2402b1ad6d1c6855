//! The mtty types: how many ports an instance has.

/// A type of mtty card.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MttyType {
    /// Type name.
    pub name: &'static str,
    /// Ports per instance.
    pub ports: usize,
}

/// Every type.
pub const TYPES: [MttyType; 2] = [
    MttyType {
        name: "mtty-1",
        ports: 1,
    },
    MttyType {
        name: "mtty-2",
        ports: 2,
    },
];

impl MttyType {
    /// The type called `name`.
    pub fn by_name(name: &str) -> Option<&'static MttyType> {
        TYPES.iter().find(|t| t.name == name)
    }

    /// A line for `types`.
    pub fn description(&self) -> String {
        let s = if self.ports == 1 { "" } else { "s" };
        format!("PCI serial card, {} 16550A port{s}", self.ports)
    }
}
