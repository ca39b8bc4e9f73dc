//! The relay role of a box in a meeting: forwarding other sites' media as the sessions' relay
//! plans say, and serving the views a player asks for.

use cuntong_core::media::routes::Routes;

use super::{Conference, ViewKey};

impl Conference {
    /// Where the relay listens, if this box relays.
    pub fn relay_addr(&self) -> Option<std::net::SocketAddr> {
        self.relay.as_ref().map(crate::relay::Relay::local_addr)
    }

    /// The relay role's counters, if this box relays.
    pub fn relay_stats(&self) -> Option<&crate::relay::RelayStats> {
        self.relay.as_ref().map(crate::relay::Relay::stats)
    }

    /// Sets the relay's forwarding to what the sessions' plans say together, with the views
    /// they ask for.
    pub(super) fn apply_relay_plans(&mut self) {
        if self.relay.is_none() {
            return;
        }
        // Views: open the new ones, close those no plan asks for any more.
        let wanted: Vec<ViewKey> = self
            .relay_plans
            .iter()
            .flat_map(|(m, p)| {
                p.views
                    .iter()
                    .filter_map(move |(ssrc, to)| Some((*m, *ssrc, to.parse().ok()?)))
            })
            .collect();
        let gone: Vec<ViewKey> = self
            .views
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        for k in gone {
            self.views.remove(&k);
            self.engine.close_view(k.0, k.1, k.2);
        }
        for k in wanted {
            if !self.views.contains_key(&k) {
                match self.engine.open_view(k.0, k.1, k.2) {
                    Some(local) => {
                        tracing::info!(meeting = %k.0, ssrc = k.1, to = %k.2, "serving a view");
                        self.views.insert(k, local);
                    }
                    None => tracing::warn!(meeting = %k.0, to = %k.2, "cannot serve a view"),
                }
            }
        }
        let Some(relay) = &self.relay else { return };
        let addr = |a: &str| match a.parse::<std::net::SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                tracing::warn!(address = a, "a relay destination is not ip:port; skipped");
                None
            }
        };
        let mut routes = Routes::new(
            self.relay_plans
                .values()
                .find_map(|p| p.upstream.as_deref().and_then(addr)),
        );
        for plan in self.relay_plans.values() {
            for (ssrc, from) in &plan.sources {
                if let Some(from) = addr(from) {
                    routes.expect(*ssrc, from);
                }
            }
            for (ssrc, dests) in &plan.routes {
                for d in dests.iter().filter_map(|d| addr(d)) {
                    routes.add(*ssrc, d);
                }
            }
        }
        // The view pipelines are this box's own: they need no consent.
        for ((_, ssrc, _), (video, audio)) in &self.views {
            routes.vouch(*video);
            routes.vouch(*audio);
            routes.add(*ssrc, *video);
            routes.add(cuntong_core::media::audio_ssrc(*ssrc), *audio);
        }
        // Consent already given carries over to the new table.
        relay.update(|r| r.set_table(routes));
    }
}
