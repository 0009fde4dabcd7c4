//! Attested evidence: answers to the model's survey questions, for what files cannot show (a roadmap,
//! a product-manager role, user satisfaction). Every answer is checked against its question's scale and
//! is always reported as attested, never as measured.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::AssessError;
use crate::model::Model;

/// Answers by question id.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Survey {
    /// The file the answers came from.
    pub source: String,
    /// Who answered, when the file says.
    pub respondent: Option<String>,
    /// Answers, booleans as 0 or 1, with the line they are on.
    pub answers: BTreeMap<String, (f64, usize)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SurveyFile {
    #[serde(default)]
    respondent: Option<String>,
    #[serde(default)]
    date: Option<String>,
    answers: BTreeMap<String, Spanned<Answer>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Answer {
    Bool(bool),
    Number(f64),
}

impl Survey {
    /// Reads and checks a survey file against the model's questions.
    pub fn parse(source_name: &str, text: &str, model: &Model) -> Result<Survey, AssessError> {
        let file: SurveyFile = serde_saphyr::from_str(text).map_err(|e| AssessError::yaml(source_name, &e))?;
        let _ = file.date;
        let mut answers = BTreeMap::new();
        for (id, answer) in file.answers {
            let line = answer.referenced.line() as usize;
            let field = format!("line {line}: answers.{id}");
            let question = model.questions.iter().find(|q| q.id == id).ok_or_else(|| {
                let known: Vec<&str> = model.questions.iter().map(|q| q.id.as_str()).collect();
                AssessError::invalid(
                    source_name,
                    &field,
                    &format!("one of the model's questions ({})", known.join(", ")),
                )
            })?;
            let value = match answer.value {
                Answer::Bool(b) => f64::from(u8::from(b)),
                Answer::Number(n) => n,
            };
            if !(question.min..=question.max).contains(&value) {
                let expected = format!("an answer from {} to {}, found {value}", question.min, question.max);
                return Err(AssessError::invalid(source_name, &field, &expected));
            }
            answers.insert(id, (value, line));
        }
        Ok(Survey { source: source_name.to_owned(), respondent: file.respondent, answers })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn answers_are_read_with_their_line_and_checked_against_the_scale() {
        let model = Model::builtin().unwrap();
        let q = model.questions.iter().find(|q| q.max > 1.0).unwrap();
        let text = format!("respondent: platform team\nanswers:\n  {}: {}\n", q.id, q.max);
        let survey = Survey::parse("survey.yaml", &text, &model).unwrap();
        assert_eq!(survey.answers[&q.id], (q.max, 3));

        let text = format!("answers:\n  {}: {}\n", q.id, q.max + 1.0);
        let err = Survey::parse("survey.yaml", &text, &model).unwrap_err().to_string();
        assert!(err.starts_with(&format!("survey.yaml: line 2: answers.{}: expected an answer from", q.id)), "{err}");

        let err = Survey::parse("survey.yaml", "answers:\n  favourite_colour: 3\n", &model).unwrap_err().to_string();
        assert!(err.contains("answers.favourite_colour: expected one of the model's questions"), "{err}");
    }
}
