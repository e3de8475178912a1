//! Ask mode (`[network] mode = "ask"`): a lookup of a name the policy does
//! not list waits while the person at an attached host terminal decides.
//!
//! [`Asks`] is shared by the session's engines (which hold the lookups) and
//! its supervisor (which shows the questions to the attached clients that can
//! answer and takes their answers). Everything here is per run of the box:
//! an answer lasts until the box stops, except "always", which the
//! supervisor also writes to vibebox.toml.
//!
//! The box decides which names are looked up, so it decides what is asked:
//! the names are checked (letters, digits, `-`, `_`, dots), at most
//! [`MAX_WAITING`] questions wait at once (more lookups are refused, not
//! queued), a question nobody answers is withdrawn after
//! [`QUESTION_TIMEOUT`], and the person can end the questions for the run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Questions waiting at once; further unknown names are refused at once.
pub const MAX_WAITING: usize = 4;

/// How long a question waits for an answer before it is withdrawn (the
/// lookups waiting on it are refused; the next lookup asks again).
pub const QUESTION_TIMEOUT: Duration = Duration::from_secs(60);

/// A question for the person: may the box reach `name`?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    /// Identifies the question in an answer.
    pub id: u64,
    /// The name the box looked up (checked: letters, digits, `-`, `_`, dots).
    pub name: String,
}

/// The person's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Answer {
    /// Allow the name until the box stops.
    Once,
    /// Allow the name, and add it to vibebox.toml's entries.
    Always,
    /// Refuse the name until the box stops.
    Deny,
    /// Refuse the name and every later unknown name until the box stops.
    Quiet,
}

/// What the engine does with a lookup of a name the policy does not list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consult {
    /// Answer it: the person allowed the name.
    Allow(&'static str),
    /// Refuse it, for this reason.
    Deny(&'static str),
    /// Hold it: a question is waiting.
    Wait,
}

/// Where a held lookup stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Still waiting for the person.
    Waiting,
    /// Decided: allowed or not, and why.
    Decided(bool, &'static str),
}

/// Why an answer was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// No such question waits (answered elsewhere, or withdrawn).
    #[error("that question is no longer waiting (answered at another terminal, or withdrawn)")]
    NotWaiting,
}

type Listener = Arc<dyn Fn(Vec<Question>) + Send + Sync>;

#[derive(Default)]
struct Desk {
    askers: usize,
    rulings: HashMap<String, (bool, &'static str)>,
    waiting: Vec<(Question, Instant)>,
    next_id: u64,
    quiet: bool,
    listener: Option<Listener>,
}

impl Desk {
    fn questions(&self) -> Vec<Question> {
        self.waiting.iter().map(|(q, _)| q.clone()).collect()
    }

    /// Withdraws the questions older than the timeout; whether any were.
    fn expire(&mut self, now: Instant) -> bool {
        let before = self.waiting.len();
        self.waiting
            .retain(|(_, since)| now.saturating_duration_since(*since) < QUESTION_TIMEOUT);
        self.waiting.len() != before
    }
}

/// The questions of one session. Cheap to clone.
#[derive(Clone, Default)]
pub struct Asks(Arc<Mutex<Desk>>);

impl std::fmt::Debug for Asks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Asks")
    }
}

impl Asks {
    fn desk(&self) -> std::sync::MutexGuard<'_, Desk> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the desk; tells the listener the waiting questions when they
    /// changed (outside the lock).
    fn change<R>(&self, f: impl FnOnce(&mut Desk) -> (R, bool)) -> R {
        let (r, tell) = {
            let mut d = self.desk();
            let (r, changed) = f(&mut d);
            let tell = changed.then(|| (d.listener.clone(), d.questions()));
            (r, tell)
        };
        if let Some((Some(listener), questions)) = tell {
            listener(questions);
        }
        r
    }

    /// Calls `f` with the waiting questions whenever they change.
    pub fn on_change(&self, f: impl Fn(Vec<Question>) + Send + Sync + 'static) {
        self.desk().listener = Some(Arc::new(f));
    }

    /// The questions waiting now.
    pub fn waiting(&self) -> Vec<Question> {
        self.change(|d| {
            let changed = d.expire(Instant::now());
            (d.questions(), changed)
        })
    }

    /// A client that can answer attached.
    pub fn add_asker(&self) {
        self.desk().askers += 1;
    }

    /// A client that could answer went away; with none left, the waiting
    /// questions are withdrawn.
    pub fn remove_asker(&self) {
        self.change(|d| {
            d.askers = d.askers.saturating_sub(1);
            let changed = d.askers == 0 && !d.waiting.is_empty();
            if d.askers == 0 {
                d.waiting.clear();
            }
            ((), changed)
        });
    }

    /// What to do with a lookup of `name` (checked), which the policy does
    /// not list.
    pub fn consult(&self, name: &str) -> Consult {
        self.change(|d| {
            let now = Instant::now();
            let mut changed = d.expire(now);
            let c = if let Some((allowed, why)) = d.rulings.get(name) {
                if *allowed {
                    Consult::Allow(why)
                } else {
                    Consult::Deny(why)
                }
            } else if d.quiet {
                Consult::Deny("ask mode: the person asked for no more questions")
            } else if d.askers == 0 {
                Consult::Deny("ask mode: nobody is attached at a host terminal to ask")
            } else if d.waiting.iter().any(|(q, _)| q.name == name) {
                Consult::Wait
            } else if d.waiting.len() >= MAX_WAITING {
                Consult::Deny("ask mode: too many questions are waiting")
            } else {
                d.next_id += 1;
                let q = Question {
                    id: d.next_id,
                    name: name.to_string(),
                };
                d.waiting.push((q, now));
                changed = true;
                Consult::Wait
            };
            (c, changed)
        })
    }

    /// Where a held lookup of `name` stands.
    pub fn standing(&self, name: &str) -> Standing {
        self.change(|d| {
            let changed = d.expire(Instant::now());
            let s = if let Some((allowed, why)) = d.rulings.get(name) {
                Standing::Decided(*allowed, why)
            } else if d.waiting.iter().any(|(q, _)| q.name == name) {
                Standing::Waiting
            } else if d.quiet {
                Standing::Decided(false, "ask mode: the person asked for no more questions")
            } else if d.askers == 0 {
                Standing::Decided(false, "ask mode: the terminals that could answer left")
            } else {
                Standing::Decided(false, "ask mode: nobody answered in time")
            };
            (s, changed)
        })
    }

    /// Whether the person allowed `name` for this run.
    pub fn allowed(&self, name: &str) -> bool {
        self.desk().rulings.get(name).is_some_and(|(a, _)| *a)
    }

    /// Takes the person's answer to question `id`; returns the name it was
    /// about.
    pub fn answer(&self, id: u64, answer: Answer) -> Result<String, AnswerError> {
        self.change(|d| {
            d.expire(Instant::now());
            let Some(i) = d.waiting.iter().position(|(q, _)| q.id == id) else {
                return (Err(AnswerError::NotWaiting), true);
            };
            let (q, _) = d.waiting.remove(i);
            let ruling = match answer {
                Answer::Once => (true, "allowed by the person until the box stops"),
                Answer::Always => (true, "allowed by the person (added to vibebox.toml)"),
                Answer::Deny => (false, "denied by the person"),
                Answer::Quiet => (false, "denied by the person"),
            };
            d.rulings.insert(q.name.clone(), ruling);
            if answer == Answer::Quiet {
                d.quiet = true;
                let rest: Vec<(Question, Instant)> = std::mem::take(&mut d.waiting);
                for (q, _) in rest {
                    d.rulings.insert(
                        q.name,
                        (false, "ask mode: the person asked for no more questions"),
                    );
                }
            }
            (Ok(q.name), true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_nobody_to_ask_a_name_is_refused_at_once() {
        let asks = Asks::default();
        assert!(matches!(asks.consult("example.com"), Consult::Deny(r) if r.contains("nobody")));
        assert!(asks.waiting().is_empty());
    }

    #[test]
    fn a_question_waits_once_per_name_and_the_answer_rules_the_run() {
        let asks = Asks::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        asks.on_change(move |q| s.lock().unwrap().push(q));
        asks.add_asker();
        assert_eq!(asks.consult("example.com"), Consult::Wait);
        assert_eq!(
            asks.consult("example.com"),
            Consult::Wait,
            "a retry asks nothing new"
        );
        let q = asks.waiting();
        assert_eq!(q.len(), 1);
        assert_eq!(seen.lock().unwrap().len(), 1, "one change told");
        assert_eq!(asks.standing("example.com"), Standing::Waiting);
        assert_eq!(asks.answer(q[0].id, Answer::Once).unwrap(), "example.com");
        assert!(matches!(
            asks.standing("example.com"),
            Standing::Decided(true, _)
        ));
        assert!(asks.allowed("example.com"));
        assert!(matches!(asks.consult("example.com"), Consult::Allow(_)));
        // Answered once: a second answer (another terminal) is refused.
        assert_eq!(
            asks.answer(q[0].id, Answer::Deny),
            Err(AnswerError::NotWaiting)
        );
        assert!(asks.allowed("example.com"));
        assert_eq!(
            seen.lock().unwrap().last().unwrap(),
            &Vec::<Question>::new()
        );
    }

    #[test]
    fn denied_names_stay_denied_and_quiet_ends_all_questions() {
        let asks = Asks::default();
        asks.add_asker();
        asks.consult("a.example");
        asks.consult("b.example");
        let q = asks.waiting();
        asks.answer(q[0].id, Answer::Deny).unwrap();
        assert!(matches!(asks.consult("a.example"), Consult::Deny(_)));
        assert!(!asks.allowed("a.example"));
        asks.answer(q[1].id, Answer::Quiet).unwrap();
        assert!(matches!(asks.consult("c.example"), Consult::Deny(r) if r.contains("no more")));
        assert!(asks.waiting().is_empty());
    }

    #[test]
    fn a_flood_of_names_asks_at_most_a_few_questions() {
        let asks = Asks::default();
        asks.add_asker();
        let mut waiting = 0;
        for i in 0..1000 {
            if asks.consult(&format!("n{i}.example")) == Consult::Wait {
                waiting += 1;
            }
        }
        assert_eq!(waiting, MAX_WAITING);
        assert_eq!(asks.waiting().len(), MAX_WAITING);
    }

    #[test]
    fn when_the_last_asker_leaves_the_questions_are_withdrawn() {
        let asks = Asks::default();
        asks.add_asker();
        asks.add_asker();
        asks.consult("example.com");
        asks.remove_asker();
        assert_eq!(asks.waiting().len(), 1, "one terminal is left");
        asks.remove_asker();
        assert!(asks.waiting().is_empty());
        assert!(
            matches!(asks.standing("example.com"), Standing::Decided(false, r) if r.contains("left"))
        );
        // Nothing was decided: with a terminal back, the name is asked again.
        asks.add_asker();
        assert_eq!(asks.consult("example.com"), Consult::Wait);
    }

    #[test]
    fn unanswered_questions_are_withdrawn_after_the_timeout() {
        let asks = Asks::default();
        asks.add_asker();
        asks.consult("example.com");
        // A minute later (without waiting a minute):
        assert!(!asks.desk().expire(Instant::now()));
        assert!(asks
            .desk()
            .expire(Instant::now() + QUESTION_TIMEOUT + Duration::from_secs(1)));
        assert!(
            matches!(asks.standing("example.com"), Standing::Decided(false, r) if r.contains("in time"))
        );
        assert!(asks.waiting().is_empty());
    }
}
