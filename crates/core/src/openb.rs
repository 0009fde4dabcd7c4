//! Loaders for the Alibaba GPU cluster trace v2023 ("openb") CSV files: the node list
//! (`sn,cpu_milli,memory_mib,gpu,model`) and the pod lists in their 11-column and 5-column forms.

use std::collections::HashSet;
use std::io::Read;

use crate::error::LoadError;
use crate::resources::{GpuRequest, MAX_GPUS_PER_NODE, MILLI_PER_GPU, Node, Pod};

const NODE_HEADER: &[&str] = &["sn", "cpu_milli", "memory_mib", "gpu", "model"];
const POD_HEADER_FULL: &[&str] = &[
    "name",
    "cpu_milli",
    "memory_mib",
    "num_gpu",
    "gpu_milli",
    "gpu_spec",
    "qos",
    "pod_phase",
    "creation_time",
    "deletion_time",
    "scheduled_time",
];
const POD_HEADER_SHORT: &[&str] = &["name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli"];
const MIB: u64 = 1 << 20;

/// One pod of a trace, with the lifetime columns the full form carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracePod {
    /// The pod and its requests.
    pub pod: Pod,
    /// Quality-of-service class (`LS`, `BE`, `Burstable`, `Guaranteed`), if given.
    pub qos: Option<String>,
    /// Creation time in seconds from the trace start, if given.
    pub creation_time: Option<u64>,
    /// Deletion time in seconds from the trace start, if given.
    pub deletion_time: Option<u64>,
}

/// Reads an openb node list. `source_name` labels errors (usually the file path).
pub fn read_nodes(source_name: &str, input: impl Read) -> Result<Vec<Node>, LoadError> {
    let mut rows = Rows::new(source_name, input, &[NODE_HEADER])?;
    let mut nodes = Vec::new();
    let mut seen = HashSet::new();
    while let Some(row) = rows.next_row()? {
        let name = row.text(0, "sn", "a node name")?;
        let cpu_milli = row.number(1, "cpu_milli", "a whole number of milli-CPUs")?;
        let memory_mib = row.number(2, "memory_mib", "a whole number of MiB")?;
        let gpu_count = row.number(3, "gpu", "a GPU count from 0 to 8")?;
        if gpu_count > MAX_GPUS_PER_NODE as u64 {
            return Err(row.field_error(3, "gpu", "a GPU count from 0 to 8"));
        }
        let model = row.get(4).trim();
        if gpu_count > 0 && model.is_empty() {
            return Err(row.field_error(4, "model", "a GPU model name for a node with GPUs"));
        }
        if !seen.insert(name.to_owned()) {
            return Err(LoadError::Duplicate {
                source_name: source_name.to_owned(),
                line: row.line,
                what: "node",
                name: name.to_owned(),
            });
        }
        nodes.push(Node {
            name: name.to_owned(),
            cpu_milli,
            memory_bytes: memory_mib.saturating_mul(MIB),
            gpu_count: gpu_count as u8,
            gpu_model: (gpu_count > 0).then(|| model.to_owned()),
            labels: Default::default(),
            taints: Vec::new(),
        });
    }
    if nodes.is_empty() {
        return Err(LoadError::Empty { source_name: source_name.to_owned(), what: "nodes" });
    }
    Ok(nodes)
}

/// Reads an openb pod list in the 11-column or the 5-column form.
pub fn read_pods(source_name: &str, input: impl Read) -> Result<Vec<TracePod>, LoadError> {
    let mut rows = Rows::new(source_name, input, &[POD_HEADER_FULL, POD_HEADER_SHORT])?;
    let full = rows.header_len == POD_HEADER_FULL.len();
    let mut pods = Vec::new();
    while let Some(row) = rows.next_row()? {
        let name = row.text(0, "name", "a pod name")?;
        let cpu_milli = row.number(1, "cpu_milli", "a whole number of milli-CPUs")?;
        let memory_mib = row.number(2, "memory_mib", "a whole number of MiB")?;
        let num_gpu = row.number(3, "num_gpu", "a GPU count from 0 to 8")?;
        if num_gpu > MAX_GPUS_PER_NODE as u64 {
            return Err(row.field_error(3, "num_gpu", "a GPU count from 0 to 8"));
        }
        let gpu_milli = row.number(4, "gpu_milli", "milli-GPUs per GPU, from 0 to 1000")?;
        if gpu_milli > u64::from(MILLI_PER_GPU) {
            return Err(row.field_error(4, "gpu_milli", "milli-GPUs per GPU, from 0 to 1000"));
        }
        if num_gpu == 0 && gpu_milli != 0 {
            return Err(row.field_error(4, "gpu_milli", "0 for a pod with num_gpu 0"));
        }
        if num_gpu > 0 && gpu_milli == 0 {
            return Err(row.field_error(4, "gpu_milli", "1 to 1000 for a pod that asks for GPUs"));
        }
        if num_gpu > 1 && gpu_milli != u64::from(MILLI_PER_GPU) {
            return Err(row.field_error(
                4,
                "gpu_milli",
                "1000 for a pod with more than one GPU (only single-GPU pods share)",
            ));
        }
        let mut pod = Pod::with_requests(
            name,
            cpu_milli,
            memory_mib.saturating_mul(MIB),
            GpuRequest { count: num_gpu as u8, milli_per_gpu: gpu_milli as u16 },
        );
        let mut record = TracePod {
            pod: Pod::with_requests("", 0, 0, GpuRequest::NONE),
            qos: None,
            creation_time: None,
            deletion_time: None,
        };
        if full {
            let spec = row.get(5).trim();
            if !spec.is_empty() {
                if spec.split('|').any(|m| m.trim().is_empty()) {
                    return Err(row.field_error(5, "gpu_spec", "GPU model names separated by '|'"));
                }
                pod.gpu_models = spec.split('|').map(|m| m.trim().to_owned()).collect();
            }
            let qos = row.get(6).trim();
            record.qos = (!qos.is_empty()).then(|| qos.to_owned());
            record.creation_time = row.optional_number(8, "creation_time", "a time in whole seconds")?;
            record.deletion_time = row.optional_number(9, "deletion_time", "a time in whole seconds")?;
            row.optional_number(10, "scheduled_time", "a time in whole seconds")?;
        }
        record.pod = pod;
        pods.push(record);
    }
    if pods.is_empty() {
        return Err(LoadError::Empty { source_name: source_name.to_owned(), what: "pods" });
    }
    Ok(pods)
}

/// Writes pods as an openb pod list in the 11-column form, in the order given, so that
/// [`read_pods`] reads back the same pods, QoS and times. Memory is written in whole MiB (rounded up).
pub fn write_pods(pods: &[TracePod]) -> String {
    let mut out = POD_HEADER_FULL.join(",");
    out.push('\n');
    for p in pods {
        let pod = &p.pod;
        let time = |t: Option<u64>| t.map(|t| t.to_string()).unwrap_or_default();
        let fields = [
            csv_field(&pod.name),
            pod.cpu_milli.to_string(),
            pod.memory_bytes.div_ceil(MIB).to_string(),
            pod.gpu.count.to_string(),
            pod.gpu.milli_per_gpu.to_string(),
            csv_field(&pod.gpu_models.join("|")),
            csv_field(p.qos.as_deref().unwrap_or("")),
            String::new(),
            time(p.creation_time),
            time(p.deletion_time),
            String::new(),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// Quotes a CSV field when it holds a comma, quote or line break.
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

/// A CSV reader that checks the header and tracks line numbers for error messages.
struct Rows<'a, R: Read> {
    source_name: &'a str,
    reader: csv::Reader<R>,
    record: csv::StringRecord,
    header_len: usize,
}

struct Row<'a> {
    source_name: &'a str,
    line: u64,
    record: &'a csv::StringRecord,
}

impl<'a, R: Read> Rows<'a, R> {
    fn new(source_name: &'a str, input: R, headers: &[&[&str]]) -> Result<Self, LoadError> {
        let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(input);
        let found = reader
            .headers()
            .map_err(|e| LoadError::Row { source_name: source_name.to_owned(), line: 1, message: e.to_string() })?
            .clone();
        let found_names: Vec<&str> = found.iter().map(str::trim).collect();
        let Some(header) = headers.iter().find(|h| **h == found_names.as_slice()) else {
            if found_names.iter().all(|f| f.is_empty()) {
                return Err(LoadError::Empty { source_name: source_name.to_owned(), what: "header row" });
            }
            let expected = headers.iter().map(|h| format!("\"{}\"", h.join(","))).collect::<Vec<_>>().join(" or ");
            return Err(LoadError::Header {
                source_name: source_name.to_owned(),
                found: found_names.join(","),
                expected,
            });
        };
        Ok(Rows { source_name, reader, record: csv::StringRecord::new(), header_len: header.len() })
    }

    fn next_row(&mut self) -> Result<Option<Row<'_>>, LoadError> {
        let more = self.reader.read_record(&mut self.record).map_err(|e| LoadError::Row {
            source_name: self.source_name.to_owned(),
            line: e.position().map_or(0, |p| p.line()),
            message: e.to_string(),
        })?;
        if !more {
            return Ok(None);
        }
        let line = self.record.position().map_or(0, |p| p.line());
        if self.record.len() != self.header_len {
            return Err(LoadError::Row {
                source_name: self.source_name.to_owned(),
                line,
                message: format!("found {} fields; expected {} as in the header", self.record.len(), self.header_len),
            });
        }
        Ok(Some(Row { source_name: self.source_name, line, record: &self.record }))
    }
}

impl Row<'_> {
    fn get(&self, index: usize) -> &str {
        self.record.get(index).unwrap_or("")
    }

    fn field_error(&self, index: usize, field: &str, expected: &str) -> LoadError {
        LoadError::Field {
            source_name: self.source_name.to_owned(),
            line: self.line,
            column: index as u64 + 1,
            field: field.to_owned(),
            value: self.get(index).to_owned(),
            expected: expected.to_owned(),
        }
    }

    fn text(&self, index: usize, field: &str, expected: &str) -> Result<&str, LoadError> {
        let value = self.get(index).trim();
        if value.is_empty() { Err(self.field_error(index, field, expected)) } else { Ok(value) }
    }

    fn number(&self, index: usize, field: &str, expected: &str) -> Result<u64, LoadError> {
        self.get(index).trim().parse::<u64>().map_err(|_| self.field_error(index, field, expected))
    }

    fn optional_number(&self, index: usize, field: &str, expected: &str) -> Result<Option<u64>, LoadError> {
        let value = self.get(index).trim();
        if value.is_empty() {
            return Ok(None);
        }
        value.parse::<u64>().map(Some).map_err(|_| self.field_error(index, field, expected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,2,P100\nn1,32000,131072,0,\n";

    #[test]
    fn reads_nodes() {
        let nodes = read_nodes("nodes.csv", NODES.as_bytes()).unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].gpu_count, 2);
        assert_eq!(nodes[0].gpu_model.as_deref(), Some("P100"));
        assert_eq!(nodes[0].memory_bytes, 262144 * MIB);
        assert_eq!(nodes[1].gpu_model, None);
    }

    #[test]
    fn reads_both_pod_forms() {
        let full = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n\
                    p0,6000,12288,1,460,V100M16|V100M32,LS,Running,0,12902960,0\n\
                    p1,1000,1024,0,0,,BE,Succeeded,5,,\n";
        let pods = read_pods("pods.csv", full.as_bytes()).unwrap();
        assert_eq!(pods[0].pod.gpu, GpuRequest { count: 1, milli_per_gpu: 460 });
        assert_eq!(pods[0].pod.gpu_models, vec!["V100M16", "V100M32"]);
        assert_eq!(pods[0].deletion_time, Some(12902960));
        assert_eq!(pods[1].pod.gpu, GpuRequest::NONE);
        assert_eq!(pods[1].deletion_time, None);
        let short = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,12000,16384,8,1000\n";
        let pods = read_pods("multigpu.csv", short.as_bytes()).unwrap();
        assert_eq!(pods[0].pod.gpu.total_milli(), 8000);
    }

    #[test]
    fn written_pods_read_back_the_same() {
        let full = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n\
                    p0,6000,12288,1,460,V100M16|V100M32,LS,Running,0,12902960,0\n\
                    \"p,1\",1000,1024,0,0,,BE,Succeeded,5,,\n\
                    p2,12000,16384,8,1000,,,,,,\n";
        let pods = read_pods("pods.csv", full.as_bytes()).unwrap();
        let again = read_pods("again.csv", write_pods(&pods).as_bytes()).unwrap();
        assert_eq!(again, pods);
    }

    fn pod_error(body: &str) -> String {
        let text = format!("name,cpu_milli,memory_mib,num_gpu,gpu_milli\n{body}");
        read_pods("bad.csv", text.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn bad_rows_name_file_line_and_field() {
        let msg = pod_error("p0,100,1,1,500\np1,-5,1,1,500\n");
        assert!(msg.starts_with("bad.csv:3:2: field `cpu_milli` is \"-5\""), "{msg}");
        let msg = pod_error("p0,100,1,2,500\n");
        assert!(msg.contains("gpu_milli") && msg.contains("only single-GPU pods share"), "{msg}");
        let msg = pod_error("p0,100,1,9,1000\n");
        assert!(msg.contains("num_gpu"), "{msg}");
        let msg = pod_error("p0,100,1,1\n");
        assert!(msg.starts_with("bad.csv:2: found 4 fields; expected 5"), "{msg}");
        let msg = pod_error("p0,abc,1,1,1000\n");
        assert!(msg.contains("expected a whole number of milli-CPUs"), "{msg}");
    }

    #[test]
    fn rejects_unknown_header_and_empty_input() {
        let msg = read_pods("x.csv", "a,b,c\n1,2,3\n".as_bytes()).unwrap_err().to_string();
        assert!(msg.contains("x.csv:1: unexpected header"), "{msg}");
        let msg =
            read_pods("x.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n".as_bytes()).unwrap_err().to_string();
        assert!(msg.contains("no pods found"), "{msg}");
        let msg = read_nodes("x.csv", "".as_bytes()).unwrap_err().to_string();
        assert!(msg.contains("x.csv"), "{msg}");
        let dup = "sn,cpu_milli,memory_mib,gpu,model\nn0,1,1,0,\nn0,1,1,0,\n";
        let msg = read_nodes("x.csv", dup.as_bytes()).unwrap_err().to_string();
        assert!(msg.contains("duplicate node name"), "{msg}");
    }
}
