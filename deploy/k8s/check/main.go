// Command check validates outboxd's Kubernetes manifests without a cluster.
//
//	go run . ../            (from deploy/k8s/check; exit status 1 on any problem)
//	go run . -extract OUT ../   also write every ConfigMap key to OUT/<key>, so
//	                            the relay's own parser can check outboxd.yaml
//
// Every document listed by kustomization.yaml is decoded strictly into its
// k8s.io/api type (sigs.k8s.io/yaml: unknown or duplicate fields are errors,
// so a misspelt or misplaced key fails). The pod template is then evaluated
// by the Pod Security Admission library at the "restricted" level of the
// latest Kubernetes version, and the pieces are checked to fit together: the
// native sidecar, its probes, resources, the ConfigMap and Secret keys the
// volumes name, the selectors, and that the relay's configuration listens
// where the probes look.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	psaapi "k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
	"sigs.k8s.io/yaml"
)

// kustomization holds the fields our kustomization.yaml may use; anything
// else is refused like an unknown field of an API type.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace,omitempty"`
	Resources  []string `json:"resources"`
	Labels     []struct {
		Pairs            map[string]string `json:"pairs"`
		IncludeSelectors bool              `json:"includeSelectors,omitempty"`
	} `json:"labels,omitempty"`
	Images []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
	} `json:"images,omitempty"`
}

type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

type checker struct {
	problems []string
	deploys  []*appsv1.Deployment
	cms      map[string]*corev1.ConfigMap
	secrets  map[string]*corev1.Secret
	pdbs     []*policyv1.PodDisruptionBudget
}

func (c *checker) fail(format string, args ...any) {
	c.problems = append(c.problems, fmt.Sprintf(format, args...))
}

func splitDocs(data []byte) [][]byte {
	var docs [][]byte
	for _, d := range bytes.Split(data, []byte("\n---")) {
		if len(bytes.TrimSpace(stripComments(d))) > 0 {
			docs = append(docs, d)
		}
	}
	return docs
}

func stripComments(d []byte) []byte {
	var out [][]byte
	for _, l := range bytes.Split(d, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) {
			out = append(out, l)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

func (c *checker) decode(file string, doc []byte) {
	var tm typeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		c.fail("%s: %v", file, err)
		return
	}
	strict := func(into any) bool {
		if err := yaml.UnmarshalStrict(doc, into); err != nil {
			c.fail("%s: %s: %v", file, tm.Kind, err)
			return false
		}
		return true
	}
	switch tm.APIVersion + " " + tm.Kind {
	case "apps/v1 Deployment":
		d := &appsv1.Deployment{}
		if strict(d) {
			c.deploys = append(c.deploys, d)
		}
	case "v1 ConfigMap":
		cm := &corev1.ConfigMap{}
		if strict(cm) {
			c.cms[cm.Name] = cm
		}
	case "v1 Secret":
		s := &corev1.Secret{}
		if strict(s) {
			c.secrets[s.Name] = s
		}
	case "policy/v1 PodDisruptionBudget":
		p := &policyv1.PodDisruptionBudget{}
		if strict(p) {
			c.pdbs = append(c.pdbs, p)
		}
	default:
		c.fail("%s: unexpected apiVersion/kind %q %q (the checker knows Deployment, ConfigMap, Secret, PodDisruptionBudget)", file, tm.APIVersion, tm.Kind)
	}
}

func hasProbe(p *corev1.Probe, path string) bool {
	return p != nil && p.HTTPGet != nil && p.HTTPGet.Path == path
}

func (c *checker) checkContainer(where string, ct *corev1.Container) {
	if ct.Resources.Requests.Cpu().IsZero() || ct.Resources.Requests.Memory().IsZero() {
		c.fail("%s: no cpu/memory requests", where)
	}
	if ct.Resources.Limits.Memory().IsZero() {
		c.fail("%s: no memory limit", where)
	}
	sc := ct.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		c.fail("%s: root filesystem not read-only", where)
	}
}

func (c *checker) checkDeployment(d *appsv1.Deployment) {
	name := "Deployment " + d.Name
	sel, err := metav1LabelSelector(d)
	if err != nil {
		c.fail("%s: selector: %v", name, err)
	} else if !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		c.fail("%s: selector does not match the pod template labels", name)
	}
	spec := &d.Spec.Template.Spec

	// Pod Security Standards, "restricted", as the admission plugin decides.
	ev, err := policy.NewEvaluator(policy.DefaultChecks())
	if err != nil {
		c.fail("pod security evaluator: %v", err)
		return
	}
	lv := psaapi.LevelVersion{Level: psaapi.LevelRestricted, Version: psaapi.LatestVersion()}
	for _, r := range ev.EvaluatePod(lv, &d.Spec.Template.ObjectMeta, spec) {
		if !r.Allowed {
			c.fail("%s: violates the restricted Pod Security Standard: %s: %s", name, r.ForbiddenReason, r.ForbiddenDetail)
		}
	}

	var sidecar *corev1.Container
	for i := range spec.InitContainers {
		ic := &spec.InitContainers[i]
		if ic.Name == "outboxd" {
			sidecar = ic
		}
	}
	if sidecar == nil {
		c.fail("%s: no init container named outboxd", name)
		return
	}
	if sidecar.RestartPolicy == nil || *sidecar.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		c.fail("%s: outboxd is not a native sidecar (restartPolicy: Always)", name)
	}
	if !hasProbe(sidecar.LivenessProbe, "/healthz") {
		c.fail("%s: outboxd livenessProbe is not GET /healthz", name)
	}
	// A native sidecar's readiness is part of the pod's: /readyz (503
	// while Kafka or the database is away) would take the service out of
	// its Service during the very outage the outbox rides out.
	if hasProbe(sidecar.ReadinessProbe, "/readyz") {
		c.fail("%s: outboxd readinessProbe on /readyz would make the pod unready whenever Kafka or the database is away; leave it out (alert on outboxd_source_state)", name)
	}
	// The configuration as a folder: a subPath mount never sees a
	// ConfigMap update, so a reload would read the old file. And -c names
	// a file of that folder.
	confArg := ""
	for i, a := range sidecar.Args {
		if (a == "-c" || a == "--config") && i+1 < len(sidecar.Args) {
			confArg = sidecar.Args[i+1]
		} else if strings.HasPrefix(a, "--config=") {
			confArg = strings.TrimPrefix(a, "--config=")
		}
	}
	confFound := false
	for _, m := range sidecar.VolumeMounts {
		for _, v := range spec.Volumes {
			if v.Name != m.Name || v.ConfigMap == nil {
				continue
			}
			if m.SubPath != "" {
				c.fail("%s: outboxd mounts ConfigMap %s with subPath %s: the file would never see an update (a reload reads the old one); mount the folder", name, v.ConfigMap.Name, m.SubPath)
			}
			// Without items every key of the ConfigMap is a file.
			files := []string{}
			for _, it := range v.ConfigMap.Items {
				files = append(files, it.Path)
			}
			if cm, ok := c.cms[v.ConfigMap.Name]; ok && len(v.ConfigMap.Items) == 0 {
				for k := range cm.Data {
					files = append(files, k)
				}
			}
			for _, f := range files {
				confFound = confFound || strings.TrimSuffix(m.MountPath, "/")+"/"+f == confArg
			}
		}
	}
	if !confFound {
		c.fail("%s: outboxd's -c %q is no file of a mounted ConfigMap", name, confArg)
	}
	if len(spec.Containers) == 0 {
		c.fail("%s: no service container", name)
	}
	c.checkContainer(name+" initContainer outboxd", sidecar)
	for i := range spec.Containers {
		c.checkContainer(name+" container "+spec.Containers[i].Name, &spec.Containers[i])
	}
	metricsPort := int32(0)
	for _, p := range sidecar.Ports {
		if p.Name == "metrics" {
			metricsPort = p.ContainerPort
		}
	}
	if metricsPort == 0 {
		c.fail("%s: outboxd has no port named metrics", name)
	}
	// The probes ask the relay's own server: a probe on another port
	// would restart a healthy relay (or never see a stuck one).
	for _, pr := range []struct {
		what  string
		probe *corev1.Probe
	}{{"startupProbe", sidecar.StartupProbe}, {"livenessProbe", sidecar.LivenessProbe}} {
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			continue
		}
		port := pr.probe.HTTPGet.Port
		if !(port.Type == intstr.String && port.StrVal == "metrics") &&
			!(port.Type == intstr.Int && port.IntVal == metricsPort) {
			c.fail("%s: outboxd %s probes port %s, not the metrics port (%d)", name, pr.what, port.String(), metricsPort)
		}
	}
	// Volumes name existing ConfigMap and Secret keys; the config listens
	// on the probed port on all interfaces.
	for _, v := range spec.Volumes {
		switch {
		case v.ConfigMap != nil:
			cm, ok := c.cms[v.ConfigMap.Name]
			if !ok {
				c.fail("%s: volume %s: no ConfigMap %s", name, v.Name, v.ConfigMap.Name)
				continue
			}
			for _, it := range v.ConfigMap.Items {
				text, ok := cm.Data[it.Key]
				if !ok {
					c.fail("%s: volume %s: ConfigMap %s has no key %s", name, v.Name, cm.Name, it.Key)
					continue
				}
				if strings.HasSuffix(it.Key, ".yaml") {
					c.checkRelayConfig(cm.Name+"/"+it.Key, text, metricsPort)
				}
			}
		case v.Secret != nil:
			s, ok := c.secrets[v.Secret.SecretName]
			if !ok {
				c.fail("%s: volume %s: no Secret %s", name, v.Name, v.Secret.SecretName)
				continue
			}
			for _, it := range v.Secret.Items {
				_, inData := s.Data[it.Key]
				_, inString := s.StringData[it.Key]
				if !inData && !inString {
					c.fail("%s: volume %s: Secret %s has no key %s", name, v.Name, s.Name, it.Key)
				}
			}
		}
	}
	found := false
	for _, p := range c.pdbs {
		ps, err := labelSelector(p.Spec.Selector)
		if err == nil && ps.Matches(labels.Set(d.Spec.Template.Labels)) {
			found = true
		}
	}
	if !found {
		c.fail("%s: no PodDisruptionBudget selects its pods", name)
	}
}

// checkRelayConfig looks at the few keys the manifests depend on.
func (c *checker) checkRelayConfig(where, text string, port int32) {
	var conf struct {
		Metrics struct {
			Listen string `json:"listen"`
		} `json:"metrics"`
		Sources []struct {
			Name         string `json:"name"`
			PasswordFile string `json:"password_file"`
		} `json:"sources"`
	}
	if err := yaml.Unmarshal([]byte(text), &conf); err != nil {
		c.fail("%s: %v", where, err)
		return
	}
	want := fmt.Sprintf("0.0.0.0:%d", port)
	if conf.Metrics.Listen != want {
		c.fail("%s: metrics.listen is %q; the kubelet probes the pod IP, expected %q", where, conf.Metrics.Listen, want)
	}
	for _, s := range conf.Sources {
		if !strings.HasPrefix(s.PasswordFile, "/etc/outboxd/secrets/") {
			c.fail("%s: source %s: password_file %q is not under the Secret's mount", where, s.Name, s.PasswordFile)
		}
	}
}

func main() {
	extract := flag.String("extract", "", "write every ConfigMap key to this folder")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: check [-extract OUT] DIR (the folder with kustomization.yaml)")
		os.Exit(2)
	}
	dir := flag.Arg(0)
	c := &checker{cms: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{}}
	kdata, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(kdata, &k); err != nil {
		c.fail("kustomization.yaml: %v", err)
	} else if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		c.fail("kustomization.yaml: apiVersion/kind %q %q", k.APIVersion, k.Kind)
	}
	docs := 0
	for _, r := range k.Resources {
		data, err := os.ReadFile(filepath.Join(dir, r))
		if err != nil {
			c.fail("kustomization.yaml: resource %s: %v", r, err)
			continue
		}
		for _, d := range splitDocs(data) {
			c.decode(r, d)
			docs++
		}
	}
	if len(c.deploys) == 0 {
		c.fail("no Deployment")
	}
	for _, d := range c.deploys {
		c.checkDeployment(d)
	}
	if *extract != "" {
		for _, cm := range c.cms {
			for key, text := range cm.Data {
				if err := os.WriteFile(filepath.Join(*extract, key), []byte(text), 0o644); err != nil {
					c.fail("extract: %v", err)
				}
			}
		}
	}
	for _, p := range c.problems {
		fmt.Fprintln(os.Stderr, "check:", p)
	}
	if len(c.problems) > 0 {
		os.Exit(1)
	}
	fmt.Printf("manifests OK: %d documents from %d resources decoded strictly; pod template meets the restricted Pod Security Standard (%s)\n",
		docs, len(k.Resources), psaapi.LatestVersion().String())
}
