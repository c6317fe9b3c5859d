//! Which address nginx sends a member's requests to: never one the container chose.
//!
//! A container's root can add interfaces and addresses of its own (a nested `docker0`, the
//! host bridge's address, an address outside), and LXD reports them all. What the container
//! cannot change is its LXD config: the NIC device LXD attached to the group's network, and
//! that network's subnet. So a member's upstream address is an address on that NIC's
//! interface, inside that subnet, and neither the network's own (gateway) address, its
//! network or broadcast address, nor loopback; with a static `ipv4.address` on the device,
//! that address only. Everything else the container reports is ignored (and logged).
use std::{ffi::CStr, net::Ipv4Addr};

use crate::lxd::{Instance, Interfaces, Network};

/// The subnet of a network: the host's address on it and the prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub gateway: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    fn mask(self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    /// An address a member may serve from: inside the subnet, and not the subnet's own.
    pub fn usable(self, ip: Ipv4Addr) -> bool {
        let (mask, ip_bits) = (self.mask(), u32::from(ip));
        let network = u32::from(self.gateway) & mask;
        ip_bits & mask == network
            && ip != self.gateway
            && !ip.is_loopback()
            && !ip.is_unspecified()
            // A /31 or /32 has no network or broadcast address.
            && (self.prefix >= 31 || (ip_bits != network && ip_bits != network | !mask))
    }
}

/// Where nginx reaches a member: an interface inside it, and the subnet its address must be
/// in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The LXD NIC device.
    pub device: String,
    /// That NIC's interface name inside the container.
    pub interface: String,
    pub network: String,
    pub subnet: Subnet,
    /// The device's static `ipv4.address`: then only that address.
    pub fixed: Option<Ipv4Addr>,
}

/// The NIC of `instance` that nginx reaches it on: on network `wanted` (the group's
/// `network`), or its first NIC on a network with a known subnet. `host_subnet` gives the
/// subnet of a host bridge LXD does not manage.
pub fn bind(
    instance: &Instance,
    networks: &[Network],
    wanted: Option<&str>,
    host_subnet: &dyn Fn(&str) -> Option<Subnet>,
) -> Result<Binding, String> {
    let mut tried = Vec::new();
    for nic in &instance.nics {
        let Some(network) = &nic.network else {
            continue;
        };
        if wanted.is_some_and(|wanted| wanted != network) {
            continue;
        }
        let managed = networks
            .iter()
            .find(|n| &n.name == network)
            .and_then(|n| n.ipv4)
            .map(|(gateway, prefix)| Subnet { gateway, prefix });
        match managed.or_else(|| host_subnet(network)) {
            Some(subnet) => {
                return Ok(Binding {
                    device: nic.device.clone(),
                    interface: nic.interface.clone(),
                    network: network.clone(),
                    subnet,
                    fixed: nic.ipv4_address,
                });
            }
            None => tried.push(format!("{} on {network}", nic.device)),
        }
    }
    Err(match (wanted, tried.is_empty()) {
        (Some(wanted), true) => format!("it has no NIC on network {wanted}"),
        (None, true) => "it has no NIC on a network".to_owned(),
        (_, false) => format!("no IPv4 subnet is known for its NIC ({})", tried.join(", ")),
    })
}

impl Binding {
    /// The member's upstream address among what it reports, and the addresses ignored.
    pub fn address(&self, interfaces: &Interfaces) -> (Option<Ipv4Addr>, Vec<Ipv4Addr>) {
        let mut chosen = None;
        let mut ignored = Vec::new();
        for (interface, addresses) in interfaces {
            for &ip in addresses {
                let fits = *interface == self.interface
                    && self.subnet.usable(ip)
                    && self.fixed.is_none_or(|fixed| fixed == ip);
                if fits && chosen.is_none() {
                    chosen = Some(ip);
                } else if !fits {
                    ignored.push(ip);
                }
            }
        }
        (chosen, ignored)
    }

    /// For logs: `eth0 (device eth0) on lxdbr0 10.0.0.1/24`.
    pub fn describe(&self) -> String {
        let device = match self.device == self.interface {
            true => String::new(),
            false => format!(" (device {})", self.device),
        };
        format!(
            "{}{device} on {} {}/{}",
            self.interface, self.network, self.subnet.gateway, self.subnet.prefix
        )
    }
}

/// The first IPv4 address and prefix of host interface `name` (a bridge LXD does not
/// manage), from `getifaddrs`.
pub fn host_subnet(name: &str) -> Option<Subnet> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a list this function frees below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut entry = list;
    while !entry.is_null() && found.is_none() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, not freed yet.
        let ifa = unsafe { &*entry };
        entry = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_netmask.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: `ifa_name` is a NUL-terminated string owned by the list.
        let ifname = unsafe { CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: `ifa_addr` points at a sockaddr whose family field is always valid.
        let family = unsafe { (*ifa.ifa_addr).sa_family };
        if ifname.to_bytes() != name.as_bytes() || i32::from(family) != libc::AF_INET {
            continue;
        }
        // SAFETY: for AF_INET both addresses are `sockaddr_in`.
        let (address, mask) = unsafe {
            (
                *ifa.ifa_addr.cast::<libc::sockaddr_in>(),
                *ifa.ifa_netmask.cast::<libc::sockaddr_in>(),
            )
        };
        let gateway = Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr));
        let prefix = u32::from_be(mask.sin_addr.s_addr).count_ones() as u8;
        found = Some(Subnet { gateway, prefix });
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{controller::group::tests::instance, lxd::NicDevice};

    fn lxdbr0() -> Vec<Network> {
        vec![Network {
            name: "lxdbr0".into(),
            managed: true,
            ipv4: Some((Ipv4Addr::new(10, 177, 42, 1), 24)),
        }]
    }

    fn no_host(_: &str) -> Option<Subnet> {
        None
    }

    fn interfaces(list: &[(&str, &[[u8; 4]])]) -> Interfaces {
        list.iter()
            .map(|(name, ips)| {
                (
                    (*name).to_owned(),
                    ips.iter().map(|&ip| ip.into()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn only_the_lxd_nic_in_its_subnet_serves() {
        let binding = bind(&instance("web-1", &[]), &lxdbr0(), None, &no_host).expect("bound");
        assert_eq!(binding.describe(), "eth0 on lxdbr0 10.177.42.1/24");
        // A nested docker0 sorts first and carries the host bridge's address; the container
        // also added an outside address and one on loopback to eth0.
        let reported = interfaces(&[
            ("docker0", &[[10, 177, 42, 1], [172, 17, 0, 1]]),
            ("eth0", &[[192, 0, 2, 7], [127, 0, 0, 5], [10, 177, 42, 23]]),
        ]);
        let (chosen, mut ignored) = binding.address(&reported);
        assert_eq!(chosen, Some(Ipv4Addr::new(10, 177, 42, 23)));
        ignored.sort();
        assert_eq!(
            ignored,
            [
                Ipv4Addr::new(10, 177, 42, 1),
                Ipv4Addr::new(127, 0, 0, 5),
                Ipv4Addr::new(172, 17, 0, 1),
                Ipv4Addr::new(192, 0, 2, 7),
            ]
        );
        // The subnet's own addresses never serve.
        for own in [[10, 177, 42, 0], [10, 177, 42, 255], [10, 177, 42, 1]] {
            let (chosen, _) = binding.address(&interfaces(&[("eth0", &[own])]));
            assert_eq!(chosen, None, "{own:?}");
        }
    }

    #[test]
    fn a_static_address_is_the_only_one_taken() {
        let mut web = instance("web-1", &[]);
        web.nics[0].ipv4_address = Some(Ipv4Addr::new(10, 177, 42, 50));
        let binding = bind(&web, &lxdbr0(), None, &no_host).expect("bound");
        let two = interfaces(&[("eth0", &[[10, 177, 42, 23], [10, 177, 42, 50]])]);
        assert_eq!(
            binding.address(&two).0,
            Some(Ipv4Addr::new(10, 177, 42, 50))
        );
        let other = interfaces(&[("eth0", &[[10, 177, 42, 23]])]);
        assert_eq!(binding.address(&other).0, None);
    }

    #[test]
    fn the_groups_network_picks_the_nic_and_a_renamed_interface_is_followed() {
        let mut web = instance("web-1", &[]);
        web.nics.insert(
            0,
            NicDevice {
                device: "admin".into(),
                interface: "enp5".into(),
                network: Some("br0".into()),
                ipv4_address: None,
            },
        );
        let host = |name: &str| {
            (name == "br0").then_some(Subnet {
                gateway: Ipv4Addr::new(192, 168, 1, 1),
                prefix: 24,
            })
        };
        let first = bind(&web, &lxdbr0(), None, &host).expect("bound");
        assert_eq!(
            first.describe(),
            "enp5 (device admin) on br0 192.168.1.1/24"
        );
        let chosen = bind(&web, &lxdbr0(), Some("lxdbr0"), &host).expect("bound");
        assert_eq!(chosen.interface, "eth0");
        let error = bind(&web, &lxdbr0(), Some("other"), &host).expect_err("no NIC there");
        assert_eq!(error, "it has no NIC on network other");
        let error = bind(&web, &[], Some("lxdbr0"), &no_host).expect_err("no subnet");
        assert_eq!(
            error,
            "no IPv4 subnet is known for its NIC (eth0 on lxdbr0)"
        );
    }

    #[test]
    fn the_loopback_interface_of_the_host_has_a_subnet() {
        assert_eq!(
            host_subnet("lo"),
            Some(Subnet {
                gateway: Ipv4Addr::LOCALHOST,
                prefix: 8
            })
        );
        assert_eq!(host_subnet("no-such-interface"), None);
    }
}
