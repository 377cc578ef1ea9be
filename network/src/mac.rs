//! Container MAC addresses: stable per container id, so a container keeps
//! its MAC across restore, and locally administered (02:…) so they never
//! collide with a vendor's.

/// 02 and five bytes of a hash of the id.
pub fn mac_for(container_id: &str) -> [u8; 6] {
    let h = crate::fnv1a(container_id.as_bytes()).to_be_bytes();
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

/// "02:ab:cd:ef:01:23".
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// `#[serde(with = "crate::mac::serde_str")]`: a MAC as "02:ab:…".
pub(crate) mod serde_str {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mac: &[u8; 6], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_mac(mac))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 6], D::Error> {
        let text = String::deserialize(d)?;
        super::parse_mac(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid MAC address {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_local_unicast() {
        let a = mac_for("abc");
        assert_eq!(a, mac_for("abc"));
        assert_ne!(a, mac_for("abd"));
        assert_eq!(a[0], 0x02, "locally administered, unicast");
    }

    #[test]
    fn text_form() {
        let mac = [0x02, 0xab, 0xcd, 0xef, 0x01, 0x23];
        assert_eq!(format_mac(&mac), "02:ab:cd:ef:01:23");
        assert_eq!(parse_mac("02:ab:cd:ef:01:23"), Some(mac));
        for bad in [
            "",
            "02:ab:cd:ef:01",
            "02:ab:cd:ef:01:23:45",
            "2:ab:cd:ef:01:23",
            "zz:ab:cd:ef:01:23",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }
}
