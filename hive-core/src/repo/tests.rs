use super::*;

fn name(s: &str) -> AgentName {
    AgentName::new(s).unwrap()
}

fn seeded() -> (tempfile::TempDir, ConfigRepo) {
    let dir = tempfile::tempdir().unwrap();
    let mut seed = BTreeMap::new();
    for n in ["alice", "bob"] {
        let policy =
            parse_agent_toml("command = [\"hive-agent\", \"demo\"]\nenv = { MODE = \"slow\" }")
                .unwrap();
        seed.insert(name(n), policy);
    }
    let (repo, fresh) = ConfigRepo::open_or_seed(&dir.path().join("meta"), &seed).unwrap();
    assert!(fresh);
    (dir, repo)
}

/// Whether `diff` has a line starting with `sign` that mentions `word`.
fn changed(diff: &str, sign: char, word: &str) -> bool {
    diff.lines().any(|l| {
        l.starts_with(sign) && !l.starts_with("---") && !l.starts_with("+++") && l.contains(word)
    })
}

fn toml_with(mode: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(
        "agent.toml".to_owned(),
        format!("command = [\"hive-agent\", \"demo\"]\nenv = {{ MODE = \"{mode}\" }}\n"),
    )])
}

#[test]
fn seeding_writes_every_agent_and_the_flake_and_checks_out_main() {
    let (dir, repo) = seeded();
    let main = repo.main().unwrap();
    let agents = repo.agents_at(main).unwrap();
    assert_eq!(
        agents.keys().cloned().collect::<Vec<_>>(),
        [name("alice"), name("bob")]
    );
    assert_eq!(agents[&name("alice")].env["MODE"], "slow");
    let flake = std::fs::read_to_string(dir.path().join("meta/flake.nix")).unwrap();
    assert!(flake.contains("\"bob\" = agent \"bob\";"));
    assert!(dir.path().join("meta/agents/alice/agent.nix").exists());
    // Opening again does not seed again.
    let (again, fresh) =
        ConfigRepo::open_or_seed(&dir.path().join("meta"), &BTreeMap::new()).unwrap();
    assert!(!fresh);
    assert_eq!(again.main().unwrap(), main);
}

#[test]
fn a_proposal_moves_nothing_until_merged_then_main_names_proposer_and_approver() {
    let (_dir, repo) = seeded();
    let main = repo.main().unwrap();
    let (commit, base) = repo
        .commit_proposal(
            &name("alice"),
            &toml_with("fast"),
            "go faster",
            "agent:alice",
        )
        .unwrap();
    assert_eq!(base, main);
    assert_eq!(repo.main().unwrap(), main, "a proposal does not move main");
    repo.set_proposal_branch(1, commit).unwrap();
    assert!(repo.has_proposal_branch(1));
    let diff = repo.diff_commit(commit).unwrap();
    assert!(
        changed(&diff, '-', "slow") && changed(&diff, '+', "fast"),
        "{diff}"
    );
    let MergeOutcome::Merged(new) = repo
        .merge(1, commit, "agent:alice", "operator:root")
        .unwrap()
    else {
        panic!("conflict")
    };
    assert_eq!(
        repo.agents_at(new).unwrap()[&name("alice")].env["MODE"],
        "fast"
    );
    let log = repo.log(None, 10).unwrap();
    assert!(
        log[0]
            .summary
            .contains("approve #1 by operator:root (proposed by agent:alice)"),
        "{log:?}"
    );
    assert_eq!(log[0].committer, "operator:root");
    assert_eq!(repo.merged_by(commit).unwrap().unwrap().1, "operator:root");
    // Merging again is a no-op, not a second merge.
    assert_eq!(
        repo.merge(1, commit, "agent:alice", "operator:root")
            .unwrap(),
        MergeOutcome::Merged(new)
    );
    // Only alice's commits show in alice's log; bob has only the seed.
    assert_eq!(repo.log(Some(&name("bob")), 10).unwrap().len(), 1);
    assert_eq!(repo.log(Some(&name("alice")), 10).unwrap().len(), 3);
}

#[test]
fn two_proposals_on_the_same_line_conflict_and_main_stays() {
    let (_dir, repo) = seeded();
    let (a, _) = repo
        .commit_proposal(&name("alice"), &toml_with("fast"), "a", "agent:alice")
        .unwrap();
    let (b, _) = repo
        .commit_proposal(&name("alice"), &toml_with("turbo"), "b", "agent:bob")
        .unwrap();
    assert!(matches!(
        repo.merge(1, a, "agent:alice", "operator:root").unwrap(),
        MergeOutcome::Merged(_)
    ));
    let main = repo.main().unwrap();
    assert_eq!(
        repo.merge(2, b, "agent:bob", "operator:root").unwrap(),
        MergeOutcome::Conflict(vec!["agents/alice/agent.toml".into()])
    );
    assert_eq!(repo.main().unwrap(), main);
}

#[test]
fn a_spawn_adds_the_agent_to_the_flake_and_a_revert_takes_a_change_back() {
    let (dir, repo) = seeded();
    let (spawn, _) = repo
        .commit_proposal(&name("scout"), &toml_with("new"), "a scout", "agent:alice")
        .unwrap();
    repo.merge(1, spawn, "agent:alice", "operator:root")
        .unwrap();
    let flake = std::fs::read_to_string(dir.path().join("meta/flake.nix")).unwrap();
    assert!(flake.contains("\"scout\" = agent \"scout\";"), "{flake}");
    assert!(dir.path().join("meta/agents/scout/agent.nix").exists());

    let (change, _) = repo
        .commit_proposal(&name("alice"), &toml_with("fast"), "fast", "agent:alice")
        .unwrap();
    let MergeOutcome::Merged(merged) = repo
        .merge(2, change, "agent:alice", "operator:root")
        .unwrap()
    else {
        panic!()
    };
    let reverted = repo.revert(&merged.to_string(), "operator:root").unwrap();
    assert_eq!(
        repo.agents_at(reverted).unwrap()[&name("alice")].env["MODE"],
        "slow"
    );
    assert!(repo.log(None, 1).unwrap()[0].summary.starts_with("revert "));
    let d = repo
        .diff_agent(&name("alice"), Some(merged), reverted)
        .unwrap();
    assert!(changed(&d, '+', "slow") && changed(&d, '-', "fast"), "{d}");
    assert!(matches!(repo.resolve("nope"), Err(RepoError::NoSuchRev(_))));
}
