{{/*
Workload templates shared by the api and worker components.
Each is called with (dict "ctx" $ "component" "api"|"worker").
*/}}

{{/* Deployment of a component. */}}
{{- define "herald.deployment" -}}
{{- $ctx := .ctx -}}
{{- $component := .component -}}
{{- $values := index $ctx.Values $component -}}
{{- $podAnnotations := dict -}}
{{- range $k, $v := ($values.podAnnotations | default dict) }}
{{- $_ := set $podAnnotations $k (toString $v) -}}
{{- end }}
{{- $_ := set $podAnnotations "checksum/config" (include "herald.configToml" $ctx | sha256sum) -}}
{{- if not $ctx.Values.auth.existingSecret -}}
{{- $secret := dict "adminToken" (toString ($ctx.Values.auth.adminToken | default "")) "redisUrl" (toString ($ctx.Values.auth.redisUrl | default "")) "redisUsername" (toString ($ctx.Values.auth.redisUsername | default "")) "redisPassword" (toString ($ctx.Values.auth.redisPassword | default "")) -}}
{{- $_ := set $podAnnotations "checksum/secret" ($secret | toJson | sha256sum) -}}
{{- end -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "herald.componentName" . }}
  namespace: {{ $ctx.Release.Namespace | quote }}
  labels:
    {{- include "herald.labels" (dict "ctx" $ctx "component" $component) | nindent 4 }}
  {{- with include "herald.annotations" (dict "ctx" $ctx) }}
  annotations:
    {{- . | nindent 4 }}
  {{- end }}
spec:
  {{- if not $values.autoscaling.enabled }}
  replicas: {{ include "herald.int" $values.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 10
  {{- with $values.updateStrategy }}
  strategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "herald.selectorLabels" (dict "ctx" $ctx "component" $component) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "herald.labels" (dict "ctx" $ctx "component" $component "extra" $values.podLabels) | nindent 8 }}
      annotations:
        {{- toYaml $podAnnotations | nindent 8 }}
    spec:
      serviceAccountName: {{ include "herald.serviceAccountName" $ctx }}
      automountServiceAccountToken: {{ $ctx.Values.serviceAccount.automountServiceAccountToken }}
      # Service links would inject HERALD_*-prefixed variables for Services
      # named herald-*, which Herald would read as configuration overrides.
      enableServiceLinks: false
      {{- with $ctx.Values.image.pullSecrets }}
      imagePullSecrets:
        {{- range . }}
        {{- if kindIs "map" . }}
        - name: {{ .name | quote }}
        {{- else }}
        - name: {{ . | quote }}
        {{- end }}
        {{- end }}
      {{- end }}
      {{- if $values.podSecurityContext.enabled }}
      securityContext:
        {{- omit $values.podSecurityContext "enabled" | toYaml | nindent 8 }}
      {{- end }}
      {{- with $values.priorityClassName }}
      priorityClassName: {{ . | quote }}
      {{- end }}
      terminationGracePeriodSeconds: {{ include "herald.terminationGracePeriod" . }}
      {{- with $values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with include "herald.topologySpreadConstraints" . }}
      topologySpreadConstraints:
        {{- . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ $component }}
          image: {{ include "herald.image" $ctx | quote }}
          imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
          {{- with $values.command }}
          command:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          args:
            {{- if $values.args }}
            {{- toYaml $values.args | nindent 12 }}
            {{- else }}
            - serve
            - --role
            - {{ $component }}
            - --config
            - /etc/herald/herald.toml
            {{- end }}
          env:
            - name: HERALD_SERVER__ADMIN_TOKEN
              valueFrom:
                secretKeyRef:
                  name: {{ include "herald.secretName" $ctx }}
                  key: {{ include "herald.secretAdminTokenKey" $ctx }}
            - name: HERALD_REDIS__URL
              valueFrom:
                secretKeyRef:
                  name: {{ include "herald.secretName" $ctx }}
                  key: {{ include "herald.secretRedisUrlKey" $ctx }}
                  {{- if ne (include "herald.redisMode" $ctx) "standalone" }}
                  optional: true
                  {{- end }}
            {{- /* Used in sentinel and cluster modes; optional in an existing Secret. */}}
            - name: HERALD_REDIS__USERNAME
              valueFrom:
                secretKeyRef:
                  name: {{ include "herald.secretName" $ctx }}
                  key: {{ include "herald.secretRedisUsernameKey" $ctx }}
                  {{- if $ctx.Values.auth.existingSecret }}
                  optional: true
                  {{- end }}
            - name: HERALD_REDIS__PASSWORD
              valueFrom:
                secretKeyRef:
                  name: {{ include "herald.secretName" $ctx }}
                  key: {{ include "herald.secretRedisPasswordKey" $ctx }}
                  {{- if $ctx.Values.auth.existingSecret }}
                  optional: true
                  {{- end }}
            {{- with $values.extraEnvVars }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- if or $values.extraEnvVarsCM $values.extraEnvVarsSecret }}
          envFrom:
            {{- with $values.extraEnvVarsCM }}
            - configMapRef:
                name: {{ . | quote }}
            {{- end }}
            {{- with $values.extraEnvVarsSecret }}
            - secretRef:
                name: {{ . | quote }}
            {{- end }}
          {{- end }}
          ports:
            - name: http
              containerPort: {{ include "herald.int" $ctx.Values.containerPorts.http }}
              protocol: TCP
            {{- if ne (include "herald.operatorPortName" $ctx) "http" }}
            - name: operator
              containerPort: {{ include "herald.int" $ctx.Values.containerPorts.operator }}
              protocol: TCP
            {{- end }}
          {{- if $values.startupProbe.enabled }}
          startupProbe:
            httpGet:
              path: /healthz
              port: {{ include "herald.operatorPortName" $ctx }}
            {{- omit $values.startupProbe "enabled" | toYaml | nindent 12 }}
          {{- end }}
          {{- if $values.livenessProbe.enabled }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: {{ include "herald.operatorPortName" $ctx }}
            {{- omit $values.livenessProbe "enabled" | toYaml | nindent 12 }}
          {{- end }}
          {{- if $values.readinessProbe.enabled }}
          readinessProbe:
            httpGet:
              path: /readyz
              port: {{ include "herald.operatorPortName" $ctx }}
            {{- omit $values.readinessProbe "enabled" | toYaml | nindent 12 }}
          {{- end }}
          {{- if gt (int ($values.preStopSleepSeconds | default 0)) 0 }}
          lifecycle:
            preStop:
              exec:
                command:
                  - /bin/sleep
                  - {{ include "herald.int" $values.preStopSleepSeconds | quote }}
          {{- end }}
          {{- with $values.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- if $values.containerSecurityContext.enabled }}
          securityContext:
            {{- omit $values.containerSecurityContext "enabled" | toYaml | nindent 12 }}
          {{- end }}
          volumeMounts:
            - name: config
              mountPath: /etc/herald
              readOnly: true
            - name: tmp
              mountPath: /tmp
            {{- with $values.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: config
          configMap:
            name: {{ include "herald.fullname" $ctx }}
            items:
              - key: herald.toml
                path: herald.toml
        - name: tmp
          emptyDir:
            medium: Memory
            {{- with $ctx.Values.tmpDir.sizeLimit }}
            sizeLimit: {{ . }}
            {{- end }}
        {{- with $values.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end -}}

{{/* HorizontalPodAutoscaler of a component. */}}
{{- define "herald.hpa" -}}
{{- $ctx := .ctx -}}
{{- $component := .component -}}
{{- $values := index $ctx.Values $component -}}
{{- $as := $values.autoscaling -}}
{{- $lag := $as.lag | default dict -}}
{{- $hasCPU := not (eq (toString ($as.targetCPU | default "")) "") -}}
{{- $hasMemory := not (eq (toString ($as.targetMemory | default "")) "") -}}
{{- if not (or $hasCPU $hasMemory $lag.enabled $as.extraMetrics) -}}
{{- fail (printf "%s.autoscaling needs at least one metric (targetCPU, targetMemory%s or extraMetrics)" $component (ternary ", lag" "" (hasKey $as "lag"))) -}}
{{- end -}}
{{- if lt (int $as.maxReplicas) (int $as.minReplicas) -}}
{{- fail (printf "%s.autoscaling.maxReplicas must not be smaller than minReplicas" $component) -}}
{{- end -}}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "herald.componentName" . }}
  namespace: {{ $ctx.Release.Namespace | quote }}
  labels:
    {{- include "herald.labels" (dict "ctx" $ctx "component" $component) | nindent 4 }}
  {{- with include "herald.annotations" (dict "ctx" $ctx) }}
  annotations:
    {{- . | nindent 4 }}
  {{- end }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "herald.componentName" . }}
  minReplicas: {{ include "herald.int" $as.minReplicas }}
  maxReplicas: {{ include "herald.int" $as.maxReplicas }}
  metrics:
    {{- if $hasCPU }}
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ include "herald.int" $as.targetCPU }}
    {{- end }}
    {{- if $hasMemory }}
    - type: Resource
      resource:
        name: memory
        target:
          type: Utilization
          averageUtilization: {{ include "herald.int" $as.targetMemory }}
    {{- end }}
    {{- if $lag.enabled }}
    {{- if eq $lag.type "External" }}
    - type: External
      external:
        metric:
          name: {{ $lag.metricName | quote }}
          {{- with $lag.selector }}
          selector:
            {{- toYaml . | nindent 12 }}
          {{- end }}
        target:
          type: AverageValue
          averageValue: {{ $lag.targetAverageValue | toString | quote }}
    {{- else if eq $lag.type "Pods" }}
    - type: Pods
      pods:
        metric:
          name: {{ $lag.metricName | quote }}
          {{- with $lag.selector }}
          selector:
            {{- toYaml . | nindent 12 }}
          {{- end }}
        target:
          type: AverageValue
          averageValue: {{ $lag.targetAverageValue | toString | quote }}
    {{- else }}
    {{- fail (printf "%s.autoscaling.lag.type must be External or Pods, not %q" $component $lag.type) }}
    {{- end }}
    {{- end }}
    {{- with $as.extraMetrics }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $as.behavior }}
  behavior:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* PodDisruptionBudget of a component. */}}
{{- define "herald.pdb" -}}
{{- $ctx := .ctx -}}
{{- $component := .component -}}
{{- $values := index $ctx.Values $component -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "herald.componentName" . }}
  namespace: {{ $ctx.Release.Namespace | quote }}
  labels:
    {{- include "herald.labels" (dict "ctx" $ctx "component" $component) | nindent 4 }}
  {{- with include "herald.annotations" (dict "ctx" $ctx) }}
  annotations:
    {{- . | nindent 4 }}
  {{- end }}
spec:
  {{- include "herald.pdbSpec" (dict "pdb" $values.pdb "component" $component) | trim | nindent 2 }}
  selector:
    matchLabels:
      {{- include "herald.selectorLabels" (dict "ctx" $ctx "component" $component) | nindent 6 }}
{{- end -}}

{{/* NetworkPolicy egress rules every component needs: DNS and Redis. */}}
{{- define "herald.networkPolicy.baseEgress" -}}
{{- $np := .Values.networkPolicy -}}
{{- if and (empty $np.redis.to) (not $np.redis.anyDestination) -}}
{{- fail "networkPolicy.redis.to must name where Redis runs (NetworkPolicyPeers), or set networkPolicy.redis.anyDestination=true" -}}
{{- end -}}
# DNS
- ports:
    {{- range $np.dns.ports }}
    - port: {{ include "herald.int" . }}
      protocol: UDP
    - port: {{ include "herald.int" . }}
      protocol: TCP
    {{- end }}
  {{- with $np.dns.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
# Redis
- ports:
    {{- range $np.redis.ports }}
    - port: {{ include "herald.int" . }}
      protocol: TCP
    {{- end }}
  {{- with $np.redis.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
