//! Which GPU the gate measures: an NVML index or a UUID.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Selects one GPU on the host, by NVML index (`0`) or by UUID (`GPU-5f0c…`, or `MIG-…`).
///
/// The default is index 0: inside a container that was given one GPU (Kubernetes device
/// plugin, `docker run --gpus device=…`), NVML sees only that GPU, as index 0.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum DeviceSelector {
    /// NVML index on this host (or in this container).
    Index(u32),
    /// NVML UUID, compared case-insensitively.
    Uuid(String),
}

impl Default for DeviceSelector {
    fn default() -> Self {
        DeviceSelector::Index(0)
    }
}

/// A device selector that is neither an index nor a UUID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a GPU: expected an index such as 0 or a UUID such as GPU-5f0c1e2a-…")]
pub struct SelectorParseError {
    /// The text as given.
    pub input: String,
}

impl FromStr for DeviceSelector {
    type Err = SelectorParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Ok(index) = t.parse::<u32>() {
            return Ok(DeviceSelector::Index(index));
        }
        // NVML prints UUIDs as GPU-xxxxxxxx-… (MIG-… for MIG instances); anything else is a
        // typo, and failing here beats a "device not found" after polling starts.
        let upper = t.to_ascii_uppercase();
        let well_formed = (upper.starts_with("GPU-") || upper.starts_with("MIG-"))
            && t.len() > 4
            && t[4..].chars().all(|c| c.is_ascii_hexdigit() || c == '-' || c == '/');
        if well_formed {
            Ok(DeviceSelector::Uuid(t.to_owned()))
        } else {
            Err(SelectorParseError { input: s.to_owned() })
        }
    }
}

impl TryFrom<String> for DeviceSelector {
    type Error = SelectorParseError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DeviceSelector> for String {
    fn from(s: DeviceSelector) -> Self {
        s.to_string()
    }
}

impl fmt::Display for DeviceSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSelector::Index(i) => write!(f, "{i}"),
            DeviceSelector::Uuid(u) => f.write_str(u),
        }
    }
}

impl DeviceSelector {
    /// Whether a device with this index and UUID is the selected one.
    pub fn matches(&self, index: u32, uuid: &str) -> bool {
        match self {
            DeviceSelector::Index(i) => *i == index,
            DeviceSelector::Uuid(u) => u.eq_ignore_ascii_case(uuid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_index_and_uuid() {
        assert_eq!("0".parse(), Ok(DeviceSelector::Index(0)));
        assert_eq!(" 3 ".parse(), Ok(DeviceSelector::Index(3)));
        let uuid = "GPU-5f0c1e2a-1b2c-3d4e-5f60-718293a4b5c6";
        assert_eq!(uuid.parse(), Ok(DeviceSelector::Uuid(uuid.to_owned())));
        assert!(DeviceSelector::Uuid(uuid.to_owned()).matches(7, &uuid.to_lowercase()));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "-1", "gpu0", "GPU-", "GPU-xyz", "first"] {
            let e = bad.parse::<DeviceSelector>().unwrap_err();
            assert!(e.to_string().contains("expected an index"), "{e}");
        }
    }

    #[test]
    fn default_is_index_zero() {
        assert_eq!(DeviceSelector::default(), DeviceSelector::Index(0));
    }
}
