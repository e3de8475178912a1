//! Base image names: one type, one rule, one place that turns a name into
//! its directory.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a name may be, for help lines.
pub const IMAGE_NAME_RULE: &str =
    "1 to 64 letters, digits, `.`, `_` and `-`, not starting with `.`, e.g. \"debian-bookworm\"";

/// The default base image.
pub const DEFAULT_IMAGE: &str = "debian-bookworm";

/// A valid base image name: a plain directory name under
/// `$VIBEBOX_HOME/images/` (never a path, never hidden).
///
/// ```
/// use vibebox_core::image::ImageName;
/// assert_eq!(ImageName::parse("debian-bookworm").unwrap().as_str(), "debian-bookworm");
/// assert!(ImageName::parse("../evil").is_err());
/// assert!(ImageName::parse(".hidden").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageName(String);

/// A string that is not a valid image name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a valid image name (allowed: {IMAGE_NAME_RULE})")]
pub struct ImageNameError(pub String);

impl ImageName {
    /// Checks `name` against the one rule.
    pub fn parse(name: &str) -> Result<ImageName, ImageNameError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if valid {
            Ok(ImageName(name.to_string()))
        } else {
            Err(ImageNameError(name.to_string()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The image's directory: `$VIBEBOX_HOME/images/<name>/`.
    pub fn dir(&self, vibebox_home: &Path) -> PathBuf {
        crate::home::images_dir(vibebox_home).join(&self.0)
    }
}

impl Default for ImageName {
    fn default() -> Self {
        ImageName(DEFAULT_IMAGE.to_string())
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ImageName {
    type Err = ImageNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageName::parse(s)
    }
}

impl TryFrom<String> for ImageName {
    type Error = ImageNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ImageName::parse(&s)
    }
}

impl From<ImageName> for String {
    fn from(n: ImageName) -> String {
        n.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_for_every_name() {
        for good in ["debian-bookworm", "a", "x.y_z-1", &"a".repeat(64)] {
            assert!(ImageName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", ".x", "a/b", "..", "a b", "é", &"a".repeat(65), "a\n"] {
            assert!(ImageName::parse(bad).is_err(), "{bad:?}");
        }
        let n = ImageName::parse("img").unwrap();
        assert_eq!(n.dir(Path::new("/h")), PathBuf::from("/h/images/img"));
        assert!(serde_json::from_str::<ImageName>("\"../x\"").is_err());
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"img\"");
    }

    proptest::proptest! {
        #[test]
        fn a_valid_name_is_one_plain_component(s in "\\PC{0,70}") {
            if let Ok(n) = ImageName::parse(&s) {
                let dir = n.dir(Path::new("/h"));
                proptest::prop_assert_eq!(dir.parent(), Some(Path::new("/h/images")));
            }
        }
    }
}
