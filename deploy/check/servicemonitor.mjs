// Validates a ServiceMonitor manifest (argv[2]) against the Prometheus Operator's schema, which
// the Kubernetes validator does not have: exits 1 with the reason if it does not validate.
import { readFileSync } from "node:fs";
import yaml from "js-yaml";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const path = process.argv[2];
const doc = yaml.load(readFileSync(path, "utf8"));
try {
  new ServiceMonitor(doc).validate();
  console.log(`${path}: a valid ServiceMonitor`);
} catch (e) {
  console.error(`${path}: ${e.message}`);
  process.exit(1);
}
