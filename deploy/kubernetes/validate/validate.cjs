// Checks Kubernetes manifests against the schemas of the API versions they
// name: the core kinds with kubernetes-models, KEDA's ScaledObject with
// @kubernetes-models/keda (both generated from the published OpenAPI
// schemas and CRDs). Prints one JSON line per container (its file, image,
// args and the variables it sets) for the caller's own checks; exits 1 on
// the first document that fails, naming the file, document and field.
//
// usage: node validate.cjs FILE.yaml...   (modules found through NODE_PATH)
"use strict";
const fs = require("fs");
const YAML = require("yaml");

const kinds = {
  "v1/ConfigMap": () => require("kubernetes-models/v1/ConfigMap").ConfigMap,
  "v1/Service": () => require("kubernetes-models/v1/Service").Service,
  "apps/v1/Deployment": () => require("kubernetes-models/apps/v1/Deployment").Deployment,
  "batch/v1/Job": () => require("kubernetes-models/batch/v1/Job").Job,
  "autoscaling/v2/HorizontalPodAutoscaler": () =>
    require("kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler").HorizontalPodAutoscaler,
  "keda.sh/v1alpha1/ScaledObject": () =>
    require("@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject").ScaledObject,
};

function fail(message) {
  console.error(message);
  process.exit(1);
}

let documents = 0;
for (const file of process.argv.slice(2)) {
  const docs = YAML.parseAllDocuments(fs.readFileSync(file, "utf8"));
  docs.forEach((doc, index) => {
    const where = `${file} document ${index + 1}`;
    if (doc.errors.length > 0) fail(`${where}: ${doc.errors[0].message}`);
    const data = doc.toJS();
    if (data === null) return;
    const key = `${data.apiVersion}/${data.kind}`;
    if (!(key in kinds)) fail(`${where}: no schema for ${key}`);
    const Model = kinds[key]();
    try {
      new Model(data).validate();
    } catch (e) {
      fail(`${where} (${key} ${data.metadata && data.metadata.name}): ${e.message}`);
    }
    documents += 1;
    if (key === "v1/ConfigMap") {
      console.log(JSON.stringify({ file, configMap: data.metadata.name, data: data.data || {} }));
    }
    const pod = data.spec && data.spec.template && data.spec.template.spec;
    for (const c of (pod && pod.containers) || []) {
      console.log(
        JSON.stringify({
          file,
          container: c.name,
          image: c.image,
          args: c.args || [],
          env: (c.env || []).map((e) => e.name),
          envFrom: (c.envFrom || []).map((e) => e.configMapRef && e.configMapRef.name),
        }),
      );
    }
  });
}
if (documents === 0) fail("no documents");
console.error(`${documents} documents valid`);
