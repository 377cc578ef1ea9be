//! tc: join two links with ingress redirects (Kata's "tcfilter" mode).
//!
//! The messages are those of
//! `tc qdisc add dev A handle ffff: ingress` and
//! `tc filter add dev A parent ffff: protocol all prio 1 u32 match u8 0 0
//! action mirred egress redirect dev B`, as rtnetlink's
//! `QDiscNewRequest::ingress` and `TrafficFilterNewRequest::redirect` build them.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirror, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::{Netlink, NetlinkError};

/// `ffff:`, the ingress qdisc's handle and its filters' parent.
const INGRESS_HANDLE: u32 = 0xffff_0000;
/// Our filters' priority (`prio 1`).
const PRIORITY: u16 = 1;
/// ETH_P_ALL: every protocol.
const ETH_P_ALL: u16 = 0x0003;

fn ingress_qdisc(index: u32) -> TcMessage {
    let mut msg = TcMessage::with_index(index as i32);
    msg.header.parent = TcHandle::INGRESS;
    msg.header.handle = TcHandle::from(INGRESS_HANDLE);
    msg.attributes.push(TcAttribute::Kind("ingress".into()));
    msg
}

fn redirect_filter(index: u32, to: u32) -> TcMessage {
    let mut msg = TcMessage::with_index(index as i32);
    msg.header.parent = TcHandle::from(INGRESS_HANDLE);
    // tcm_info: priority in the high half, the protocol (network order) in the low.
    msg.header.info = (u32::from(PRIORITY) << 16) | u32::from(ETH_P_ALL.to_be());

    // `match u8 0 0`: one key that matches everything.
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];

    let mut mirror = TcMirror::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];

    msg.attributes
        .push(TcAttribute::Kind(TcFilterU32::KIND.into()));
    msg.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(selector)),
        TcOption::U32(TcFilterU32Option::Action(vec![action])),
    ]));
    msg
}

/// The mirred egress-redirect targets in one u32 filter message.
fn redirect_targets(msg: &TcMessage) -> Vec<u32> {
    let mut targets = Vec::new();
    for attr in &msg.attributes {
        let TcAttribute::Options(opts) = attr else {
            continue;
        };
        for opt in opts {
            let TcOption::U32(TcFilterU32Option::Action(actions)) = opt else {
                continue;
            };
            for action in actions {
                for a in &action.attributes {
                    let TcActionAttribute::Options(aopts) = a else {
                        continue;
                    };
                    for o in aopts {
                        if let TcActionOption::Mirror(TcActionMirrorOption::Parms(m)) = o {
                            if m.eaction == TcMirrorActionType::EgressRedir {
                                targets.push(m.ifindex);
                            }
                        }
                    }
                }
            }
        }
    }
    targets
}

impl Netlink {
    /// tc: ingress qdisc on both links, and a match-all u32 filter on each ingress with
    /// `action mirred egress redirect dev <other>` (what Kata's tcfilter mode does).
    /// Idempotent: an existing ingress qdisc is kept, and an existing redirect
    /// to the other link is not added twice.
    pub fn redirect_both_ways(&mut self, a: u32, b: u32) -> Result<(), NetlinkError> {
        self.add_ingress_qdisc(a)?;
        self.add_ingress_qdisc(b)?;
        self.add_redirect(a, b)?;
        self.add_redirect(b, a)
    }

    /// The links that traffic arriving on link `index` is redirected to
    /// (mirred egress redirects of the u32 filters on its ingress qdisc).
    /// Empty when the link has no ingress qdisc.
    pub fn redirects(&mut self, index: u32) -> Result<Vec<u32>, NetlinkError> {
        let mut req = TcMessage::with_index(index as i32);
        req.header.parent = TcHandle::from(INGRESS_HANDLE);
        match self.sock.dump(RouteNetlinkMessage::GetTrafficFilter(req)) {
            Ok(replies) => Ok(replies
                .iter()
                .filter_map(|m| match m {
                    RouteNetlinkMessage::NewTrafficFilter(f) if f.header.index == index as i32 => {
                        Some(redirect_targets(f))
                    }
                    _ => None,
                })
                .flatten()
                .collect()),
            // No ingress qdisc: no filters there.
            Err(e) if e.errno() == Some(libc::EINVAL) => Ok(Vec::new()),
            Err(e) => {
                let name = self.describe(index);
                Err(e.context(format!("list the ingress filters of {name}")))
            }
        }
    }

    fn add_ingress_qdisc(&mut self, index: u32) -> Result<(), NetlinkError> {
        let msg = RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(index));
        match self.sock.request(msg, NLM_F_CREATE | NLM_F_EXCL) {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            Err(e) => {
                let name = self.describe(index);
                Err(e.context(format!("add an ingress qdisc to {name}")))
            }
        }
    }

    fn add_redirect(&mut self, from: u32, to: u32) -> Result<(), NetlinkError> {
        if self.redirects(from)?.contains(&to) {
            return Ok(());
        }
        let msg = RouteNetlinkMessage::NewTrafficFilter(redirect_filter(from, to));
        match self.sock.request(msg, NLM_F_CREATE | NLM_F_EXCL) {
            Ok(_) => Ok(()),
            Err(e) => {
                let (f, t) = (self.describe(from), self.describe(to));
                Err(e.context(format!("redirect traffic from {f} to {t}")))
            }
        }
    }
}
