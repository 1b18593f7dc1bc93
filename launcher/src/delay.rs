//! Latency emulation without `sch_netem` (absent from this kernel): iptables sends a
//! host's incoming packets to NFQUEUE, one queue per delay value, and this process holds
//! each packet for its queue's delay before accepting it. Delaying on ingress, not on the
//! sender's egress, keeps TCP throughput intact (measured on this kernel when the testbed
//! was designed: a queue on egress stalls TCP's acknowledgements).
//!
//! Runs as `dvms-launch internal delay --netns NS --queue Q:MS ...` inside the host's
//! network namespace. The iptables rules use `--queue-bypass`, so traffic flows
//! undelayed if this process dies.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// One ingress delay rule of a host: packets from `src_range` are held `delay_ms`
/// (half the RTT: the other half is added by the other side's own ingress).
#[derive(Debug, Clone, PartialEq)]
pub struct DelayRule {
    pub src_first: String,
    pub src_last: String,
    pub queue: u16,
    pub delay_ms: f64,
}

/// Parses `Q:MS` (queue number, one-way delay in milliseconds).
pub fn parse_queue_spec(s: &str) -> Result<(u16, Duration)> {
    let (q, ms) = s
        .split_once(':')
        .with_context(|| format!("'{s}': expected QUEUE:MS"))?;
    let q: u16 = q
        .parse()
        .with_context(|| format!("'{s}': bad queue number"))?;
    let ms: f64 = ms
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && (0.0..=10_000.0).contains(v))
        .with_context(|| format!("'{s}': delay must be 0..10000 ms"))?;
    Ok((q, Duration::from_secs_f64(ms / 1000.0)))
}

/// Holds packets of each queue for its delay; never returns unless the queue fails.
pub fn run(queues: &[(u16, Duration)]) -> Result<()> {
    let mut q = nfq::Queue::open().context("cannot open nfnetlink queue")?;
    for &(num, _) in queues {
        q.bind(num)
            .with_context(|| format!("cannot bind NFQUEUE {num}"))?;
        q.set_copy_range(num, 0)?; // metadata only: we never look at payloads
        q.set_queue_max_len(num, 65536)?;
        q.set_fail_open(num, true)?; // accept rather than drop when full
    }
    let delay_of = |num: u16| {
        queues
            .iter()
            .find(|(n, _)| *n == num)
            .map(|(_, d)| *d)
            .unwrap_or_default()
    };
    // One FIFO: delays differ per queue, so keep one deque per queue to stay ordered.
    let mut held: Vec<(u16, VecDeque<(Instant, nfq::Message)>)> =
        queues.iter().map(|&(n, _)| (n, VecDeque::new())).collect();
    loop {
        let now = Instant::now();
        for (_, fifo) in held.iter_mut() {
            while fifo.front().is_some_and(|(t, _)| *t <= now) {
                let (_, mut msg) = fifo.pop_front().expect("front exists");
                msg.set_verdict(nfq::Verdict::Accept);
                q.verdict(msg)?;
            }
        }
        let next_due = held
            .iter()
            .filter_map(|(_, f)| f.front().map(|(t, _)| *t))
            .min();
        // Block when idle; otherwise poll at most every millisecond so that new packets
        // are timestamped within 1 ms of their arrival.
        q.set_nonblocking(next_due.is_some());
        loop {
            match q.recv() {
                Ok(msg) => {
                    let num = msg.get_queue_num();
                    let due = Instant::now() + delay_of(num);
                    if let Some((_, fifo)) = held.iter_mut().find(|(n, _)| *n == num) {
                        fifo.push_back((due, msg));
                    }
                    q.set_nonblocking(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue, // fail-open dropped some
                Err(e) => return Err(e).context("NFQUEUE receive failed"),
            }
        }
        if let Some(due) = held
            .iter()
            .filter_map(|(_, f)| f.front().map(|(t, _)| *t))
            .min()
        {
            let wait = due
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(1));
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_specs_parse_and_reject_nonsense() {
        assert_eq!(
            parse_queue_spec("3:10").unwrap(),
            (3, Duration::from_millis(10))
        );
        assert_eq!(
            parse_queue_spec("0:0.5").unwrap().1,
            Duration::from_micros(500)
        );
        for bad in ["3", "x:1", "1:-2", "1:nan", "1:99999"] {
            assert!(parse_queue_spec(bad).is_err(), "{bad}");
        }
    }
}
