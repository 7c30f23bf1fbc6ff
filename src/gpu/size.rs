//! Memory sizes as people write them on a command line (`20GiB`, `18G`, `5000MiB`, bytes).
use bytesize::ByteSize;

/// A size that could not be parsed; the message names the flag or field it came from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{field}: {input:?} is not a size; expected bytes or a number with a unit, \
     e.g. 20GiB, 18G (decimal, 10^9), 5000MiB or 21474836480 ({reason})"
)]
pub struct SizeParseError {
    /// The flag or field the value came from, e.g. `--min-free`.
    pub field: String,
    /// The text as given.
    pub input: String,
    /// What the parser objected to.
    pub reason: String,
}

/// Parses a size such as `20GiB`, `20Gi`, `18G`, `18GB`, `5000MiB`, `1.5GiB` or a plain
/// number of bytes. Units follow bytesize (and Kubernetes quantities): `G`/`GB` are
/// decimal (10^9), `Gi`/`GiB` binary (2^30). `field` names the flag in the error.
pub fn parse_size(field: &str, input: &str) -> Result<u64, SizeParseError> {
    let err = |reason: String| SizeParseError {
        field: field.to_owned(),
        input: input.to_owned(),
        reason,
    };
    let trimmed = input.trim();
    // bytesize would read "" and "-5GiB" as parse errors too, but with messages that do not
    // say what is wrong; name the two common mistakes.
    if trimmed.is_empty() {
        return Err(err("it is empty".to_owned()));
    }
    if trimmed.starts_with('-') {
        return Err(err("it is negative".to_owned()));
    }
    trimmed.parse::<ByteSize>().map(|b| b.as_u64()).map_err(err)
}

/// Formats bytes with binary units, e.g. `20.0 GiB` (what progress lines and errors show).
pub fn format_bytes(bytes: u64) -> String {
    ByteSize(bytes).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_size("--min-free", "20GiB"), Ok(20 << 30));
        assert_eq!(parse_size("--min-free", "20Gi"), Ok(20 << 30));
        assert_eq!(parse_size("--min-free", "18G"), Ok(18_000_000_000));
        assert_eq!(parse_size("--min-free", "5000MiB"), Ok(5000 << 20));
        assert_eq!(parse_size("--min-free", " 1234 "), Ok(1234));
        assert_eq!(parse_size("--min-free", "1.5GiB"), Ok(3 << 29));
    }

    #[test]
    fn errors_name_the_flag() {
        for bad in ["", "-5GiB", "lots", "20 GiBs", "GiB"] {
            let e = parse_size("--min-free", bad).unwrap_err();
            assert!(e.to_string().starts_with("--min-free: "), "{e}");
        }
    }

    #[test]
    fn formats_binary_units() {
        assert_eq!(format_bytes(20 << 30), "20.0 GiB");
    }
}
