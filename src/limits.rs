//! Connection limits with postscreen's replies, and stress mode.
//!
//! Counted per real client, so a flood through one HAProxy is seen per
//! attacker: concurrent connections per client address, clients still being
//! screened (greet wait and built-in engine), and clients in total. Health
//! checks are never counted, and allowlisted or cached clients never take a
//! screening place, so a flood cannot take the node out of HAProxy. Each
//! place is a guard that gives itself back when dropped.
//!
//! Stress mode follows postscreen: when screening reaches 90% of its limit,
//! the greet wait drops to 2 s until screening falls back to 70%.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::LimitsSection;
use crate::log;

/// The greet wait under stress (postscreen's `${stress?{2}...}`).
pub const STRESS_GREET_WAIT: Duration = Duration::from_secs(2);

/// Which limit refused a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Too many connections from this client.
    PerClient,
    /// Too many clients being screened.
    Screening,
    /// Too many clients in total.
    Total,
}

/// The live counts.
#[derive(Debug, Default)]
pub struct Limits {
    per_client: Mutex<HashMap<IpAddr, usize>>,
    screening: AtomicUsize,
    total: AtomicUsize,
    /// The highest `total` since [`Limits::take_peak`] last read it.
    peak: AtomicUsize,
    stressed: AtomicBool,
}

/// A counted place; dropping it gives the place back.
#[must_use = "the place is given back when the guard is dropped"]
#[derive(Debug)]
pub struct Place {
    limits: Arc<Limits>,
    kind: Kind,
    screening_limit: usize,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Client(IpAddr),
    Screening,
    Total,
}

impl Limits {
    /// Takes a client place (total and per client); `Err` names the limit.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        settings: &LimitsSection,
    ) -> Result<(Place, Place), Refusal> {
        let total = self.total.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(total, Ordering::Relaxed);
        let total_place = Place {
            limits: Arc::clone(self),
            kind: Kind::Total,
            screening_limit: settings.screening,
        };
        if settings.total > 0 && total > settings.total {
            return Err(Refusal::Total);
        }
        let count = match self.per_client.lock() {
            Ok(mut map) => {
                let count = map.entry(ip).or_insert(0);
                *count += 1;
                *count
            }
            Err(_) => 0,
        };
        let client_place = Place {
            limits: Arc::clone(self),
            kind: Kind::Client(ip),
            screening_limit: settings.screening,
        };
        if settings.client_connections > 0 && count > settings.client_connections {
            return Err(Refusal::PerClient);
        }
        Ok((total_place, client_place))
    }

    /// Takes a screening place; `Err` when all are busy.
    pub fn screen(self: &Arc<Self>, settings: &LimitsSection) -> Result<Place, Refusal> {
        let now = self.screening.fetch_add(1, Ordering::SeqCst) + 1;
        let place = Place {
            limits: Arc::clone(self),
            kind: Kind::Screening,
            screening_limit: settings.screening,
        };
        if settings.screening > 0 && now > settings.screening {
            return Err(Refusal::Screening);
        }
        self.update_stress(now, settings.screening);
        Ok(place)
    }

    /// Whether stress mode is on.
    pub fn stressed(&self) -> bool {
        self.stressed.load(Ordering::SeqCst)
    }

    /// How many client connections there are.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    /// The highest client count since the last call, restarting from now.
    pub fn take_peak(&self) -> usize {
        self.peak.swap(self.total(), Ordering::Relaxed)
    }

    /// Gives back the per-client table's room beyond what it holds now.
    pub fn compact(&self) {
        if let Ok(mut map) = self.per_client.lock() {
            map.shrink_to_fit();
        }
    }

    /// How many clients are being screened.
    pub fn screening(&self) -> usize {
        self.screening.load(Ordering::SeqCst)
    }

    fn update_stress(&self, screening: usize, limit: usize) {
        if limit == 0 {
            return;
        }
        let (enter, leave) = ((limit * 9).div_ceil(10), limit * 7 / 10);
        if screening >= enter.max(1) && !self.stressed.swap(true, Ordering::SeqCst) {
            log::stress(true, screening);
        } else if screening <= leave && self.stressed.swap(false, Ordering::SeqCst) {
            log::stress(false, screening);
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        match self.kind {
            Kind::Total => {
                self.limits.total.fetch_sub(1, Ordering::SeqCst);
            }
            Kind::Screening => {
                let now = self.limits.screening.fetch_sub(1, Ordering::SeqCst) - 1;
                self.limits.update_stress(now, self.screening_limit);
            }
            Kind::Client(ip) => {
                if let Ok(mut map) = self.limits.per_client.lock() {
                    if let Some(count) = map.get_mut(&ip) {
                        *count -= 1;
                        if *count == 0 {
                            map.remove(&ip);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(client: usize, screening: usize, total: usize) -> LimitsSection {
        LimitsSection {
            client_connections: client,
            screening,
            total,
        }
    }

    #[test]
    fn places_are_given_back() {
        let limits = Arc::new(Limits::default());
        let s = settings(2, 10, 3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = limits.admit(ip, &s).unwrap();
        let b = limits.admit(ip, &s).unwrap();
        assert_eq!(limits.admit(ip, &s).unwrap_err(), Refusal::PerClient);
        let other = limits.admit("192.0.2.2".parse().unwrap(), &s).unwrap();
        assert_eq!(
            limits.admit("192.0.2.3".parse().unwrap(), &s).unwrap_err(),
            Refusal::Total
        );
        drop((a, b, other));
        assert!(limits.per_client.lock().unwrap().is_empty());
        assert!(limits.admit(ip, &s).is_ok());
    }

    #[test]
    fn stress_has_hysteresis() {
        let limits = Arc::new(Limits::default());
        let s = settings(0, 10, 0);
        let mut places: Vec<Place> = (0..8).map(|_| limits.screen(&s).unwrap()).collect();
        assert!(!limits.stressed());
        places.push(limits.screen(&s).unwrap());
        assert!(limits.stressed(), "9 of 10");
        places.truncate(8);
        assert!(limits.stressed(), "still above 70%");
        places.truncate(7);
        assert!(!limits.stressed(), "back at 70%");
        let more: Vec<Place> = (0..3).map(|_| limits.screen(&s).unwrap()).collect();
        assert_eq!(limits.screen(&s).unwrap_err(), Refusal::Screening);
        drop(more);
    }
}
