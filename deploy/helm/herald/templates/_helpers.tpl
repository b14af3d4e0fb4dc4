{{/*
Helpers of the herald chart. Nothing here renders a resource by itself.
*/}}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "herald.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Fully qualified name, the prefix of every resource name. Truncated to 56
characters so that a component suffix ("-worker") still fits in 63.
*/}}
{{- define "herald.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 56 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 56 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 56 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of a component's resources. Call with (dict "ctx" $ "component" "api"). */}}
{{- define "herald.componentName" -}}
{{- printf "%s-%s" (include "herald.fullname" .ctx) .component -}}
{{- end -}}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "herald.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector labels. Call with (dict "ctx" $ "component" "api"); the component may
be empty for resources shared by both components.
*/}}
{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herald.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{/*
Labels of a resource: commonLabels, then the standard labels (which win).
Call with (dict "ctx" $ "component" "api" "extra" $moreLabels); component and
extra are optional. Extra labels sit between commonLabels and the standard ones.
*/}}
{{- define "herald.labels" -}}
{{- $ctx := .ctx -}}
{{- $labels := dict -}}
{{- range $k, $v := $ctx.Values.commonLabels }}
{{- $_ := set $labels $k (toString $v) -}}
{{- end }}
{{- range $k, $v := (.extra | default dict) }}
{{- $_ := set $labels $k (toString $v) -}}
{{- end }}
{{- $_ := set $labels "helm.sh/chart" (include "herald.chart" $ctx) -}}
{{- $_ := set $labels "app.kubernetes.io/name" (include "herald.name" $ctx) -}}
{{- $_ := set $labels "app.kubernetes.io/instance" $ctx.Release.Name -}}
{{- $_ := set $labels "app.kubernetes.io/version" (include "herald.imageTag" $ctx | replace "+" "_" | trunc 63 | trimSuffix "-") -}}
{{- $_ := set $labels "app.kubernetes.io/managed-by" $ctx.Release.Service -}}
{{- $_ := set $labels "app.kubernetes.io/part-of" "herald" -}}
{{- if .component -}}
{{- $_ := set $labels "app.kubernetes.io/component" .component -}}
{{- end -}}
{{- toYaml $labels -}}
{{- end -}}

{{/*
Annotations of a resource: commonAnnotations plus the given extra ones (which
win). Call with (dict "ctx" $ "extra" $annotations). Renders nothing when empty.
*/}}
{{- define "herald.annotations" -}}
{{- $annotations := dict -}}
{{- range $k, $v := .ctx.Values.commonAnnotations }}
{{- $_ := set $annotations $k (toString $v) -}}
{{- end }}
{{- range $k, $v := (.extra | default dict) }}
{{- $_ := set $annotations $k (toString $v) -}}
{{- end }}
{{- if $annotations -}}
{{- toYaml $annotations -}}
{{- end -}}
{{- end -}}

{{/* The image tag: image.tag, or the chart's appVersion. */}}
{{- define "herald.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion | toString -}}
{{- end -}}

{{/* Full image reference: [registry/]repository(:tag|@digest). */}}
{{- define "herald.image" -}}
{{- $ref := .Values.image.repository -}}
{{- if .Values.image.registry -}}
{{- $ref = printf "%s/%s" (trimSuffix "/" .Values.image.registry) .Values.image.repository -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $ref .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref (include "herald.imageTag" .) -}}
{{- end -}}
{{- end -}}

{{/* Name of the ServiceAccount the pods run as. */}}
{{- define "herald.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "herald.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Name of the Secret holding the admin token and the Redis credentials. */}}
{{- define "herald.secretName" -}}
{{- if .Values.auth.existingSecret -}}
{{- tpl .Values.auth.existingSecret . -}}
{{- else -}}
{{- include "herald.fullname" . -}}
{{- end -}}
{{- end -}}

{{/* Key of the admin token in the Secret. */}}
{{- define "herald.secretAdminTokenKey" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecretAdminTokenKey -}}
{{- else -}}
admin-token
{{- end -}}
{{- end -}}

{{/* Key of the Redis URL in the Secret. */}}
{{- define "herald.secretRedisUrlKey" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecretRedisUrlKey -}}
{{- else -}}
redis-url
{{- end -}}
{{- end -}}

{{/* Key of the Redis ACL user (sentinel and cluster modes) in the Secret. */}}
{{- define "herald.secretRedisUsernameKey" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecretRedisUsernameKey -}}
{{- else -}}
redis-username
{{- end -}}
{{- end -}}

{{/* Key of the Redis password (sentinel and cluster modes) in the Secret. */}}
{{- define "herald.secretRedisPasswordKey" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecretRedisPasswordKey -}}
{{- else -}}
redis-password
{{- end -}}
{{- end -}}

{{/*
Render an integer-valued number without float formatting (values arrive as
float64, which would print as 1.048576e+06).
*/}}
{{- define "herald.int" -}}
{{- if kindIs "float64" . -}}
{{- int64 . -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------------
TOML rendering of `config`.
--------------------------------------------------------------------- */}}

{{/* A TOML key: bare when it can be, quoted otherwise. */}}
{{- define "herald.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}
{{- . -}}
{{- else -}}
{{- toJson . -}}
{{- end -}}
{{- end -}}

{{/* A TOML value: string, boolean, integer, float, array or inline table. */}}
{{- define "herald.toml.value" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}
{{- toJson $v -}}
{{- else if kindIs "bool" $v -}}
{{- ternary "true" "false" $v -}}
{{- else if kindIs "float64" $v -}}
{{- if eq $v (float64 (int64 $v)) -}}
{{- int64 $v -}}
{{- else -}}
{{- $v -}}
{{- end -}}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "int32" $v) (kindIs "uint64" $v) (kindIs "uint32" $v) -}}
{{- $v -}}
{{- else if kindIs "slice" $v -}}
[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "herald.toml.value" $e }}{{ end }}]
{{- else if kindIs "map" $v -}}
{{ "{" }}{{ $first := true }}{{ range $k, $e := $v }}{{ if not (kindIs "invalid" $e) }}{{ if not $first }},{{ end }} {{ include "herald.toml.key" $k }} = {{ include "herald.toml.value" $e }}{{ $first = false }}{{ end }}{{ end }} {{ "}" }}
{{- else -}}
{{- fail (printf "config: cannot render %v (%s) as TOML" $v (typeOf $v)) -}}
{{- end -}}
{{- end -}}

{{/*
The effective configuration map: .Values.config with server.listen set from
containerPorts.http. Fails on keys the chart manages itself.
Returns YAML (use with fromYaml).
*/}}
{{- define "herald.configMap" -}}
{{- $config := deepCopy (.Values.config | default dict) -}}
{{- range $section, $body := $config -}}
{{- if and (not (kindIs "map" $body)) (not (kindIs "invalid" $body)) -}}
{{- fail (printf "config.%s must be a map (a TOML table)" $section) -}}
{{- end -}}
{{- end -}}
{{- $server := get $config "server" | default dict -}}
{{- $redis := get $config "redis" | default dict -}}
{{- if hasKey $server "admin_token" -}}
{{- fail "config.server.admin_token must not be set: the admin token comes from the Secret (auth.adminToken or auth.existingSecret)" -}}
{{- end -}}
{{- if hasKey $server "listen" -}}
{{- fail "config.server.listen must not be set: use containerPorts.http" -}}
{{- end -}}
{{- if hasKey $server "operator_listen" -}}
{{- fail "config.server.operator_listen must not be set: use containerPorts.operator" -}}
{{- end -}}
{{- if hasKey $redis "url" -}}
{{- fail "config.redis.url must not be set: the Redis URL comes from the Secret (auth.redisUrl or auth.existingSecret)" -}}
{{- end -}}
{{- if hasKey $redis "username" -}}
{{- fail "config.redis.username must not be set: the Redis user comes from the Secret (auth.redisUsername or auth.existingSecret)" -}}
{{- end -}}
{{- if hasKey $redis "password" -}}
{{- fail "config.redis.password must not be set: the Redis password comes from the Secret (auth.redisPassword or auth.existingSecret)" -}}
{{- end -}}
{{- $mode := get $redis "mode" | default "standalone" -}}
{{- $nodes := get $redis "nodes" | default list -}}
{{- if not (has $mode (list "standalone" "sentinel" "cluster")) -}}
{{- fail (printf "config.redis.mode must be standalone, sentinel or cluster, not %q" $mode) -}}
{{- end -}}
{{- if and (ne $mode "standalone") (empty $nodes) -}}
{{- fail (printf "config.redis.nodes must list the %s nodes when config.redis.mode is %s" (ternary "sentinel" "cluster seed" (eq $mode "sentinel")) $mode) -}}
{{- end -}}
{{- if and (eq $mode "sentinel") (empty (get $redis "sentinel_master")) -}}
{{- fail "config.redis.sentinel_master must name the master when config.redis.mode is sentinel" -}}
{{- end -}}
{{- $_ := set $server "listen" (printf "0.0.0.0:%s" (include "herald.int" .Values.containerPorts.http)) -}}
{{- if gt (int (.Values.containerPorts.operator | default 0)) 0 -}}
{{- $_ := set $server "operator_listen" (printf "0.0.0.0:%s" (include "herald.int" .Values.containerPorts.operator)) -}}
{{- end -}}
{{- $_ := set $config "server" $server -}}
{{- toYaml $config -}}
{{- end -}}

{{/* herald.toml, rendered from the effective configuration. */}}
{{- define "herald.configToml" -}}
{{- $config := include "herald.configMap" . | fromYaml -}}
# herald.toml rendered by the herald Helm chart from .Values.config.
# The admin token and the Redis URL, user and password are not here: they come
# from the Secret through HERALD_SERVER__ADMIN_TOKEN, HERALD_REDIS__URL,
# HERALD_REDIS__USERNAME and HERALD_REDIS__PASSWORD.
{{- range $section, $body := $config }}
{{- if kindIs "map" $body }}

[{{ include "herald.toml.key" $section }}]
{{- range $key, $value := $body }}
{{- if not (kindIs "invalid" $value) }}
{{ include "herald.toml.key" $key }} = {{ include "herald.toml.value" $value }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{ end -}}

{{/* shutdown_grace_secs as an integer (the binary's default is 25). */}}
{{- define "herald.shutdownGrace" -}}
{{- $server := .Values.config.server | default dict -}}
{{- $grace := 25 -}}
{{- if and (hasKey $server "shutdown_grace_secs") (not (kindIs "invalid" (index $server "shutdown_grace_secs"))) -}}
{{- $grace = index $server "shutdown_grace_secs" -}}
{{- end -}}
{{- include "herald.int" $grace -}}
{{- end -}}

{{/*
terminationGracePeriodSeconds of a component: the configured value, or
preStopSleepSeconds + shutdown_grace_secs + 5. Fails when a configured value
leaves no time for the drain. Call with (dict "ctx" $ "component" "api").
*/}}
{{- define "herald.terminationGracePeriod" -}}
{{- $values := index .ctx.Values .component -}}
{{- $grace := include "herald.shutdownGrace" .ctx | int -}}
{{- $preStop := $values.preStopSleepSeconds | default 0 | int -}}
{{- $minimum := add $grace $preStop -}}
{{- if or (kindIs "invalid" $values.terminationGracePeriodSeconds) (eq (toString $values.terminationGracePeriodSeconds) "") -}}
{{- add $minimum 5 -}}
{{- else -}}
{{- $configured := $values.terminationGracePeriodSeconds | int -}}
{{- if le $configured $minimum -}}
{{- fail (printf "%s.terminationGracePeriodSeconds (%d) must be larger than %s.preStopSleepSeconds + config.server.shutdown_grace_secs (%d)" .component $configured .component $minimum) -}}
{{- end -}}
{{- $configured -}}
{{- end -}}
{{- end -}}

{{/* Redis mode from config (defaults to standalone). */}}
{{- define "herald.redisMode" -}}
{{- $redis := .Values.config.redis | default dict -}}
{{- get $redis "mode" | default "standalone" -}}
{{- end -}}

{{/*
Pod topology spread constraints of a component: a constraint without a
labelSelector selects the component's pods.
Call with (dict "ctx" $ "component" "api").
*/}}
{{- define "herald.topologySpreadConstraints" -}}
{{- $values := index .ctx.Values .component -}}
{{- $out := list -}}
{{- range $values.topologySpreadConstraints -}}
{{- $c := deepCopy . -}}
{{- if not (hasKey $c "labelSelector") -}}
{{- $_ := set $c "labelSelector" (dict "matchLabels" (include "herald.selectorLabels" (dict "ctx" $.ctx "component" $.component) | fromYaml)) -}}
{{- end -}}
{{- $out = append $out $c -}}
{{- end -}}
{{- if $out -}}
{{- toYaml $out -}}
{{- end -}}
{{- end -}}

{{/*
PodDisruptionBudget spec fields of a component (minAvailable or
maxUnavailable; maxUnavailable 1 when neither is set).
*/}}
{{- define "herald.pdbSpec" -}}
{{- $pdb := .pdb -}}
{{- $min := "" -}}
{{- if not (kindIs "invalid" $pdb.minAvailable) -}}
{{- $min = include "herald.int" $pdb.minAvailable -}}
{{- end -}}
{{- $max := "" -}}
{{- if not (kindIs "invalid" $pdb.maxUnavailable) -}}
{{- $max = include "herald.int" $pdb.maxUnavailable -}}
{{- end -}}
{{- if and (ne $min "") (ne $max "") -}}
{{- fail (printf "%s.pdb: set minAvailable or maxUnavailable, not both" .component) -}}
{{- end -}}
{{- if ne $min "" }}
minAvailable: {{ if regexMatch "^[0-9]+$" $min }}{{ $min }}{{ else }}{{ $min | quote }}{{ end }}
{{- else if ne $max "" }}
maxUnavailable: {{ if regexMatch "^[0-9]+$" $max }}{{ $max }}{{ else }}{{ $max | quote }}{{ end }}
{{- else }}
maxUnavailable: 1
{{- end }}
{{- end -}}

{{/* The container port name of the operator surface (probes, /metrics): "operator" when
containerPorts.operator is set, else "http". */}}
{{- define "herald.operatorPortName" -}}
{{- if gt (int (.Values.containerPorts.operator | default 0)) 0 -}}operator{{- else -}}http{{- end -}}
{{- end -}}

{{/* The port number of the operator surface. */}}
{{- define "herald.operatorPort" -}}
{{- if gt (int (.Values.containerPorts.operator | default 0)) 0 -}}
{{- include "herald.int" .Values.containerPorts.operator -}}
{{- else -}}
{{- include "herald.int" .Values.containerPorts.http -}}
{{- end -}}
{{- end -}}
