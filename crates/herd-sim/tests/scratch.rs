use herd_membership::Event;
use herd_sim::{Sim, SimConfig, scenarios};
use std::time::Duration;

#[test]
fn scratch_fp() {
    let (mut sim, j) = scenarios::join(10, 1);
    println!("join {j:?}");
    sim.run_for(Duration::from_secs(10));
    sim.set_loss(0.05);
    sim.set_delay(Duration::from_micros(500), Duration::from_millis(20));
    sim.record_events();
    sim.run_for(Duration::from_secs(3600));
    let ev = sim.take_events();
    let mut shown = 0;
    for (t, o, e) in &ev {
        match e {
            Event::Rejoined(_) | Event::NodeDown(_) | Event::NodeSuspect(_) => {
                if shown < 60 {
                    println!("{:.3} {} {:?}", t.as_secs_f64(), sim.name(*o), e);
                    shown += 1;
                }
            }
            _ => {}
        }
    }
    println!("{:?}", sim.stats());
}

#[test]
fn scratch_partition() {
    let (mut sim, _) = scenarios::join(100, 1);
    sim.run_for(Duration::from_secs(5));
    sim.partition(|i| (i % 2) as u32);
    for _ in 0..12 {
        sim.run_for(Duration::from_secs(5));
        println!("t={:?} split={}", sim.now(), sim.sides_split());
        let mut bad = 0;
        for o in 0..sim.len() {
            let m = sim.membership(o).unwrap();
            for (id, s) in m.iter_nodes() {
                let t: usize = id.name[1..].parse().unwrap();
                let same = t % 2 == o % 2;
                let ok = if same {
                    s == herd_membership::NodeState::Alive
                } else {
                    s == herd_membership::NodeState::Dead
                };
                if !ok {
                    bad += 1;
                    if bad < 5 {
                        println!("  {} sees {} {:?} same={}", sim.name(o), id, s, same);
                    }
                }
            }
        }
        println!("  bad={bad} {:?}", sim.stats());
    }
}

#[test]
fn scratch_fp2() {
    let (mut sim, _) = scenarios::join(10, 1);
    sim.run_for(Duration::from_secs(10));
    sim.set_loss(0.05);
    sim.set_delay(Duration::from_micros(500), Duration::from_millis(20));
    sim.record_events();
    let d = Duration::from_secs_f64(251.0) - sim.now();
    sim.run_for(d);
    sim.take_events();
    for _ in 0..40 {
        sim.run_for(Duration::from_millis(100));
        let m1 = sim.membership(1).unwrap();
        let m6 = sim.membership(6).unwrap();
        println!(
            "{:.1} n1 sees n6 {:?}  n6 me {} counts6 {:?}",
            sim.now().as_secs_f64(),
            m1.state_of("n0006"),
            m6.me(),
            m6.counts()
        );
        for (t, o, e) in sim.take_events() {
            println!("   {:.3} {} {:?}", t.as_secs_f64(), sim.name(o), e);
        }
    }
}

#[test]
fn scratch_partition2() {
    let (mut sim, _) = scenarios::join(100, 1);
    sim.run_for(Duration::from_secs(5));
    sim.partition(|i| (i % 2) as u32);
    for _ in 0..30 {
        sim.run_for(Duration::from_secs(1));
        let mut by_state = std::collections::BTreeMap::new();
        for o in (0..100).step_by(2) {
            let m = sim.membership(o).unwrap();
            let s = m.state_of("n0011").map(|(_, s)| s);
            *by_state.entry(format!("{s:?}")).or_insert(0) += 1;
        }
        let m = sim.membership(40).unwrap();
        println!("t={:?} even side sees n0011: {:?}; n40: {:?} stats {:?}", sim.now(), by_state, m.state_of("n0011"), m.stats());
    }
}
