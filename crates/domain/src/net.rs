//! CIDR blocks for IP allow and deny lists and trusted proxies.

use std::net::IpAddr;
use std::str::FromStr;

/// An IPv4 or IPv6 network, `10.0.0.0/8` or `2001:db8::/32`; a bare address
/// is a /32 (or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// Whether `ip` is inside this network. IPv4-mapped IPv6 addresses
    /// (`::ffff:10.0.0.1`) match IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                let mask = mask_u32(self.prefix_len);
                u32::from(network) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                let mask = mask_u128(self.prefix_len);
                u128::from(network) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn mask_u32(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len.min(32)))
    }
}

fn mask_u128(prefix_len: u8) -> u128 {
    if prefix_len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix_len.min(128)))
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("'{text}' is not an IP address or CIDR block"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => max,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{text}': the prefix length must be 0–{max}"))?,
        };
        // An IPv4-mapped IPv6 block (`::ffff:10.0.0.0/104`) is the IPv4
        // block it maps: addresses are compared as IPv4 (see `contains`).
        if let IpAddr::V6(v6) = network
            && let Some(v4) = v6.to_ipv4_mapped()
            && prefix_len >= 96
        {
            return Ok(Self {
                network: IpAddr::V4(v4),
                prefix_len: prefix_len - 96,
            });
        }
        Ok(Self {
            network,
            prefix_len,
        })
    }
}

impl Cidr {
    /// Parses as [`FromStr`] does, and refuses a block with bits set past
    /// its prefix (`10.0.0.5/8`): most likely a typo for the network or
    /// for one address, and the two differ by millions of addresses. Used
    /// where a person writes a list (the admin API, the config file);
    /// lists stored before this check compile as the network they name.
    pub fn parse_exact(text: &str) -> Result<Self, String> {
        let cidr: Self = text.parse()?;
        let network = cidr.network_address();
        if network != cidr.network {
            let (address, prefix) = (cidr.network, cidr.prefix_len);
            let max = if address.is_ipv4() { 32 } else { 128 };
            return Err(format!(
                "'{text}' has address bits set past its /{prefix} prefix: write {network}/{prefix} for the network, or {address}/{max} for the one address"
            ));
        }
        Ok(cidr)
    }

    /// The network's first address (the address with its host bits cleared).
    fn network_address(&self) -> IpAddr {
        match self.network {
            IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & mask_u32(self.prefix_len)).into()),
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & mask_u128(self.prefix_len)).into()),
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Parses a list of CIDR blocks.
pub fn parse_list(list: &[String]) -> Result<Vec<Cidr>, String> {
    list.iter().map(|text| text.parse()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(cidr: &str, ip: &str, expected: bool) {
        let cidr: Cidr = cidr.parse().unwrap_or_else(|e| unreachable!("{e}"));
        let ip: IpAddr = ip.parse().unwrap_or_else(|_| unreachable!("{ip}"));
        assert_eq!(cidr.contains(ip), expected, "{cidr} ∋ {ip}");
    }

    #[test]
    fn membership() {
        check("10.0.0.0/8", "10.1.2.3", true);
        check("10.0.0.0/8", "11.0.0.1", false);
        check("10.0.0.0/8", "::ffff:10.0.0.1", true);
        check("192.168.1.7", "192.168.1.7", true);
        check("192.168.1.7", "192.168.1.8", false);
        check("0.0.0.0/0", "8.8.8.8", true);
        check("2001:db8::/32", "2001:db8:1::1", true);
        check("2001:db8::/32", "2001:db9::1", false);
        check("::/0", "::1", true);
        check("10.0.0.0/8", "::1", false);
        // An IPv4-mapped block is its IPv4 block.
        check("::ffff:127.0.0.1/128", "127.0.0.1", true);
        check("::ffff:10.0.0.0/104", "10.9.8.7", true);
        check("::ffff:10.0.0.0/104", "11.0.0.1", false);
    }

    #[test]
    fn written_blocks_have_no_address_bits_past_their_prefix() {
        for good in [
            "10.0.0.0/8",
            "10.0.0.5",
            "10.0.0.5/32",
            "0.0.0.0/0",
            "2001:db8::/32",
            "::ffff:10.0.0.0/104",
        ] {
            assert!(Cidr::parse_exact(good).is_ok(), "{good}");
        }
        let error = Cidr::parse_exact("10.0.0.5/8").err().unwrap_or_default();
        assert!(
            error.contains("10.0.0.0/8") && error.contains("10.0.0.5/32"),
            "{error}"
        );
        let error = Cidr::parse_exact("2001:db8::1/32")
            .err()
            .unwrap_or_default();
        assert!(
            error.contains("2001:db8::/32") && error.contains("2001:db8::1/128"),
            "{error}"
        );
        assert!(Cidr::parse_exact("::ffff:10.0.0.1/104").is_err());
        // What was stored before the check still compiles, as the network.
        check("10.0.0.5/8", "10.200.0.1", true);
    }

    #[test]
    fn parse_errors_name_the_input() {
        for bad in ["", "10.0.0.0/33", "::/129", "abc", "10.0.0.0/x"] {
            let error = bad.parse::<Cidr>().err().unwrap_or_default();
            assert!(error.contains(bad), "{error}");
        }
    }
}
