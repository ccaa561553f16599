// Validates custom resources (read as a JSON array on stdin) against the schemas of
// @kubernetes-models (cert-manager, prometheus-operator). Prints one line per object:
// "ok KIND/NAME" or "FAIL KIND/NAME: reason". Exit code 1 if any failed.
// Usage: node validate-crds.mjs NODE_MODULES_DIR < objects.json
import path from "node:path";
import { pathToFileURL } from "node:url";

const nm = process.argv[2];
const load = async (rel) => import(pathToFileURL(path.join(nm, rel)).href);
const cm = await load("@kubernetes-models/cert-manager/cert-manager.io/v1/index.js");
const po = await load("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/index.js");
const models = {
  "cert-manager.io/v1": cm,
  "monitoring.coreos.com/v1": po,
};

let input = "";
for await (const chunk of process.stdin) input += chunk;
let failed = 0;
for (const obj of JSON.parse(input)) {
  const id = `${obj.kind}/${obj.metadata?.name}`;
  const Model = models[obj.apiVersion]?.[obj.kind];
  if (!Model) {
    console.log(`FAIL ${id}: no schema for ${obj.apiVersion} ${obj.kind}`);
    failed++;
    continue;
  }
  try {
    new Model(obj).validate();
    console.log(`ok ${id}`);
  } catch (e) {
    console.log(`FAIL ${id}: ${e.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
