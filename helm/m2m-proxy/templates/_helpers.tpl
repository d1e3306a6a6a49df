{{/*
=================================================================================================
Public named templates, for your own chart (README.md, "Sidecar injection"):

  m2m-proxy.container       the sidecar container, one list item; with sidecar.mode native it
                            carries `restartPolicy: Always` and belongs in initContainers
  m2m-proxy.nativeSidecar   the container when sidecar.mode is native, else nothing
  m2m-proxy.classicSidecar  the container when sidecar.mode is classic, else nothing
  m2m-proxy.volumes         the volumes the container mounts (list items)
  m2m-proxy.podLabels       pod labels the PodMonitor and the metrics Service select on
  m2m-proxy.podAnnotations  checksum of the proxy's configuration (rolls pods when it changes)
  m2m-proxy.terminationGracePeriodSeconds  shutdown.timeout + 10 s, as a number

Each takes the root context (`.`) of either chart:
  - this chart, rendered alone: the values are `.Values`;
  - your chart, with this one as a dependency: the values are `.Values.m2m-proxy` (or
    `.Values.m2mProxy` when the dependency is aliased m2mProxy), which Helm fills with this
    chart's defaults merged with yours.
Names are built from "m2m-proxy" and the release name, never from `.Chart.Name`, so both charts
agree on the ConfigMap and Secret names.
=================================================================================================
*/}}

{{/* Runs template .tpl with a context whose .Values are this chart's values, see above. */}}
{{- define "m2m-proxy.scoped" -}}
{{- $root := .root -}}
{{- $values := $root.Values -}}
{{- if hasKey $root.Values "m2m-proxy" -}}
{{- $values = index $root.Values "m2m-proxy" -}}
{{- else if hasKey $root.Values "m2mProxy" -}}
{{- $values = $root.Values.m2mProxy -}}
{{- end -}}
{{- include .tpl (dict "Values" $values "Release" $root.Release "Chart" $root.Chart "Capabilities" $root.Capabilities "Template" $root.Template "Files" $root.Files) -}}
{{- end -}}

{{- define "m2m-proxy.container" -}}
{{- include "m2m-proxy.scoped" (dict "tpl" "m2m-proxy.impl.container" "root" .) -}}
{{- end -}}

{{- define "m2m-proxy.nativeSidecar" -}}
{{- include "m2m-proxy.scoped" (dict "tpl" "m2m-proxy.impl.nativeSidecar" "root" .) -}}
{{- end -}}

{{- define "m2m-proxy.classicSidecar" -}}
{{- include "m2m-proxy.scoped" (dict "tpl" "m2m-proxy.impl.classicSidecar" "root" .) -}}
{{- end -}}

{{- define "m2m-proxy.volumes" -}}
{{- include "m2m-proxy.scoped" (dict "tpl" "m2m-proxy.impl.volumes" "root" .) -}}
{{- end -}}

{{- define "m2m-proxy.podLabels" -}}
{{- include "m2m-proxy.scoped" (dict "tpl" "m2m-proxy.impl.podLabels" "root" .) -}}
{{- end -}}

{{- define "m2m-proxy.podAnnotations" -}}
{{- include "m2m-proxy.scoped" (dict "tpl" "m2m-proxy.impl.podAnnotations" "root" .) -}}
{{- end -}}

{{- define "m2m-proxy.terminationGracePeriodSeconds" -}}
{{- include "m2m-proxy.scoped" (dict "tpl" "m2m-proxy.impl.terminationGracePeriodSeconds" "root" .) -}}
{{- end -}}

{{/* ============================== names and labels ============================== */}}

{{- define "m2m-proxy.name" -}}
{{- default "m2m-proxy" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-m2m-proxy, or <release> when it already contains the name; at most 63 characters. */}}
{{- define "m2m-proxy.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "m2m-proxy.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "m2m-proxy.credentialsSecretName" -}}
{{- .Values.credentials.existingSecret | default (printf "%s-credentials" (include "m2m-proxy.fullname" .)) -}}
{{- end -}}

{{- define "m2m-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "m2m-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "m2m-proxy.labels" -}}
helm.sh/chart: {{ printf "m2m-proxy-%s" .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "m2m-proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | default .Values.image.tag | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: m2m-proxy
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "m2m-proxy.impl.podLabels" -}}
m2m-proxy/instance: {{ include "m2m-proxy.fullname" . }}
{{- end -}}

{{- define "m2m-proxy.impl.podAnnotations" -}}
checksum/m2m-proxy-config: {{ include "m2m-proxy.configYaml" . | sha256sum }}
{{- end -}}

{{- define "m2m-proxy.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* ============================== durations ============================== */}}

{{/* A duration string ("500ms", "30s", "1.5m", "6h") in milliseconds, as text. */}}
{{- define "m2m-proxy.durationMs" -}}
{{- $amount := regexFind `^[0-9]+(\.[0-9]+)?` . -}}
{{- $unit := trimPrefix $amount . -}}
{{- $factor := get (dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000) $unit -}}
{{- if or (not $amount) (not $factor) -}}
{{- fail (printf "m2m-proxy: %q is not a duration (e.g. 500ms, 30s, 5m, 6h)" .) -}}
{{- end -}}
{{- mulf (float64 $amount) $factor -}}
{{- end -}}

{{- define "m2m-proxy.durationSeconds" -}}
{{- divf (include "m2m-proxy.durationMs" .) 1000 -}}
{{- end -}}

{{/* shutdown.timeout + 10 s of margin (+ the classic preStop sleep, which runs before SIGTERM). */}}
{{- define "m2m-proxy.impl.terminationGracePeriodSeconds" -}}
{{- $preStop := 0 -}}
{{- if eq .Values.sidecar.mode "classic" }}{{ $preStop = int .Values.sidecar.preStopSleepSeconds }}{{ end -}}
{{- add 10 $preStop (include "m2m-proxy.durationSeconds" .Values.shutdown.timeout | float64 | ceil | int) -}}
{{- end -}}

{{/* ============================== credentials ============================== */}}

{{/* The file name each credential part is mounted as, under credentials.mountPath. */}}
{{- define "m2m-proxy.credentialFiles" -}}
{{- toJson (dict "authorization" "authorization" "clientId" "client-id" "clientSecret" "client-secret" "privateKey" "private-key.pem") -}}
{{- end -}}

{{/*
The credential parts in use, as JSON {part: key in the Secret}: from existingSecretKeys with an
existing Secret, else the inline values present (the chart's Secret uses the file names as keys).
*/}}
{{- define "m2m-proxy.credentialKeys" -}}
{{- $c := .Values.credentials -}}
{{- $files := include "m2m-proxy.credentialFiles" . | fromJson -}}
{{- $keys := dict -}}
{{- range $part := list "authorization" "clientId" "clientSecret" "privateKey" -}}
{{- if $c.existingSecret -}}
{{- with index $c.existingSecretKeys $part -}}{{- $_ := set $keys $part . -}}{{- end -}}
{{- else if index $c.inline $part -}}
{{- $_ := set $keys $part (index $files $part) -}}
{{- end -}}
{{- end -}}
{{- toJson $keys -}}
{{- end -}}

{{- define "m2m-proxy.inlineCredentials" -}}
{{- $set := list -}}
{{- range $part, $value := .Values.credentials.inline -}}
{{- if $value -}}{{- $set = append $set $part -}}{{- end -}}
{{- end -}}
{{- join "," $set -}}
{{- end -}}

{{/* ============================== validation ============================== */}}

{{/*
Refuses impossible combinations, listing every problem at once (as the proxy's --check does).
values.schema.json refuses wrong types and shapes; this catches what spans several values.
*/}}
{{- define "m2m-proxy.validate" -}}
{{- $v := .Values -}}
{{- $errors := list -}}
{{- if not $v.upstream.url -}}
{{- $errors = append $errors "upstream.url is required (e.g. https://api.example.com/api/v1)" -}}
{{- else if regexMatch `^https?://[^/]*@` $v.upstream.url -}}
{{- $errors = append $errors "upstream.url must not contain credentials" -}}
{{- end -}}
{{- if not $v.token.url -}}
{{- $errors = append $errors "token.url is required (the OAuth 2.0 token endpoint)" -}}
{{- end -}}
{{- $c := $v.credentials -}}
{{- $inline := include "m2m-proxy.inlineCredentials" . -}}
{{- $keys := include "m2m-proxy.credentialKeys" . | fromJson -}}
{{- if and $c.existingSecret $inline -}}
{{- $errors = append $errors (printf "credentials: use credentials.existingSecret or credentials.inline, not both (inline has %s)" $inline) -}}
{{- else if and (not $c.existingSecret) (not $inline) -}}
{{- $errors = append $errors "credentials: none given; set credentials.existingSecret and credentials.existingSecretKeys, or credentials.inline" -}}
{{- else if and $c.existingSecret (not $keys) -}}
{{- $errors = append $errors "credentials.existingSecretKeys: map at least one part (authorization, or clientId + clientSecret, or clientId + privateKey) to a key of the Secret" -}}
{{- else -}}
{{- $forms := 0 -}}
{{- range $part := list "authorization" "clientSecret" "privateKey" -}}
{{- if hasKey $keys $part -}}{{- $forms = add1 $forms -}}{{- end -}}
{{- end -}}
{{- if gt $forms 1 -}}
{{- $errors = append $errors "credentials: use exactly one form: authorization, clientId + clientSecret, or clientId + privateKey" -}}
{{- end -}}
{{- if and (or (hasKey $keys "clientSecret") (hasKey $keys "privateKey")) (not (hasKey $keys "clientId")) -}}
{{- $errors = append $errors "credentials: clientId is required with clientSecret or privateKey" -}}
{{- end -}}
{{- if and (hasKey $keys "clientId") (eq $forms 0) -}}
{{- $errors = append $errors "credentials: clientId needs clientSecret or privateKey beside it" -}}
{{- end -}}
{{- if and (hasKey $keys "privateKey") (ne $v.token.authMethod "private_key_jwt") -}}
{{- $errors = append $errors "token.authMethod must be private_key_jwt when a privateKey is given" -}}
{{- end -}}
{{- if and (eq $v.token.authMethod "private_key_jwt") (not (hasKey $keys "privateKey")) -}}
{{- $errors = append $errors "token.authMethod private_key_jwt needs credentials privateKey (and clientId)" -}}
{{- end -}}
{{- end -}}
{{- if and $c.keyId (not (hasKey $keys "privateKey")) -}}
{{- $errors = append $errors "credentials.keyId is only used with a privateKey" -}}
{{- end -}}
{{- if gt (include "m2m-proxy.durationMs" $v.token.retry.min | float64) (include "m2m-proxy.durationMs" $v.token.retry.max | float64) -}}
{{- $errors = append $errors "token.retry.min must not be greater than token.retry.max" -}}
{{- end -}}
{{- if and $v.upstream.ca.configMap $v.upstream.ca.secret -}}
{{- $errors = append $errors "upstream.ca: use configMap or secret, not both" -}}
{{- end -}}
{{- $shared := $v.rateLimit.shared -}}
{{- if $shared.enabled -}}
{{- if not $shared.redis -}}
{{- $errors = append $errors "rateLimit.shared.redis is required when rateLimit.shared.enabled (e.g. redis://redis:6379/0)" -}}
{{- else if regexMatch `^rediss?://[^/@]*:[^/@]*@` $shared.redis -}}
{{- $errors = append $errors "rateLimit.shared.redis must not contain a password; use rateLimit.shared.password.existingSecret" -}}
{{- end -}}
{{- end -}}
{{- if and (has $v.admin.host (list "127.0.0.1" "localhost" "::1")) (or $v.probes.startup.enabled $v.probes.liveness.enabled $v.probes.readiness.enabled) -}}
{{- $errors = append $errors (printf "admin.host %s is loopback: the kubelet's probes and Prometheus cannot reach it (use 0.0.0.0 or turn the probes off)" $v.admin.host) -}}
{{- end -}}
{{- if eq (int $v.listen.port) (int $v.admin.port) -}}
{{- $errors = append $errors "listen.port and admin.port must differ" -}}
{{- end -}}
{{- if and (eq $v.sidecar.mode "native") (semverCompare "<1.29.0-0" .Capabilities.KubeVersion.Version) -}}
{{- $errors = append $errors (printf "sidecar.mode native needs Kubernetes 1.29 or later (this is %s); use sidecar.mode classic" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- if and $v.monitoring.serviceMonitor.enabled (not (or $v.metricsService.enabled $v.example.enabled)) -}}
{{- $errors = append $errors "monitoring.serviceMonitor needs metricsService.enabled (or example.enabled); for your own pods monitoring.podMonitor needs no Service" -}}
{{- end -}}
{{- if and $v.monitoring.serviceMonitor.enabled $v.monitoring.podMonitor.enabled -}}
{{- $errors = append $errors "monitoring: enable podMonitor or serviceMonitor, not both (every pod would be scraped twice)" -}}
{{- end -}}
{{- if $errors -}}
{{- fail (printf "\n\nm2m-proxy: invalid values:\n  - %s\n" (join "\n  - " $errors)) -}}
{{- end -}}
{{- end -}}

{{/* ============================== the proxy's configuration ============================== */}}

{{/* m2m-proxy.yaml (CONTRACT.md "Configuration"), in the contract's key order. */}}
{{- define "m2m-proxy.configYaml" -}}
{{- $v := .Values -}}
{{- $files := include "m2m-proxy.credentialFiles" . | fromJson -}}
{{- $keys := include "m2m-proxy.credentialKeys" . | fromJson -}}
{{- $upstream := dict "url" $v.upstream.url "timeout" $v.upstream.timeout -}}
{{- if or $v.upstream.ca.configMap $v.upstream.ca.secret -}}
{{- $_ := set $upstream "caFile" (printf "/etc/m2m-proxy-ca/%s" $v.upstream.ca.key) -}}
{{- end -}}
{{- $credentials := dict -}}
{{- range $part, $key := $keys -}}
{{- $_ := set $credentials (printf "%sFile" $part) (printf "%s/%s" (trimSuffix "/" $v.credentials.mountPath) (index $files $part)) -}}
{{- end -}}
{{- with $v.credentials.keyId -}}{{- $_ := set $credentials "keyId" . -}}{{- end -}}
{{- $token := dict "url" $v.token.url "authMethod" $v.token.authMethod "credentials" $credentials "timeout" $v.token.timeout "refreshAt" $v.token.refreshAt "minRemaining" $v.token.minRemaining "retry" (dict "min" $v.token.retry.min "max" $v.token.retry.max) -}}
{{- range $k := list "scope" "audience" "resource" -}}
{{- with index $v.token $k -}}{{- $_ := set $token $k . -}}{{- end -}}
{{- end -}}
{{- with $v.token.params -}}{{- $_ := set $token "params" . -}}{{- end -}}
{{- $r := $v.rateLimit -}}
{{- $rateLimit := dict "perSecond" $r.perSecond "burst" $r.burst "window" (dict "max" $r.window.max "length" $r.window.length) "queue" (dict "max" $r.queue.max "timeout" $r.queue.timeout) -}}
{{- if $r.shared.enabled -}}
{{- $shared := dict "redis" $r.shared.redis "key" (include "m2m-proxy.sharedKey" .) "fallback" $r.shared.fallback -}}
{{- if $r.shared.password.existingSecret -}}
{{- $_ := set $shared "passwordFile" (printf "%s/password" (trimSuffix "/" $r.shared.password.mountPath)) -}}
{{- end -}}
{{- $_ := set $rateLimit "shared" $shared -}}
{{- end -}}
# Rendered by the m2m-proxy Helm chart from its values; see CONTRACT.md "Configuration".
listen:
  {{- toYaml (dict "host" $v.listen.host "port" $v.listen.port) | nindent 2 }}
admin:
  {{- toYaml (dict "host" $v.admin.host "port" $v.admin.port) | nindent 2 }}
upstream:
  {{- toYaml $upstream | nindent 2 }}
token:
  {{- toYaml $token | nindent 2 }}
rateLimit:
  {{- toYaml $rateLimit | nindent 2 }}
log:
  level: {{ $v.log.level }}
  access: {{ $v.log.access | default false }}
{{- $ratioSet := not (kindIs "invalid" $v.tracing.sampleRatio) }}
{{- if or $v.tracing.endpoint $ratioSet }}
tracing:
  {{- with $v.tracing.endpoint }}
  endpoint: {{ . | quote }}
  {{- end }}
  {{- if $ratioSet }}
  sampleRatio: {{ $v.tracing.sampleRatio }}
  {{- end }}
{{- end }}
shutdown:
  timeout: {{ $v.shutdown.timeout }}
{{- end -}}

{{/* rateLimit.shared.key, defaulting to m2m-proxy:<upstream host>. */}}
{{- define "m2m-proxy.sharedKey" -}}
{{- .Values.rateLimit.shared.key | default (printf "m2m-proxy:%s" (urlParse .Values.upstream.url).host) -}}
{{- end -}}

{{/* ============================== the sidecar ============================== */}}

{{- define "m2m-proxy.probe" -}}
{{- $p := .probe -}}
httpGet:
  path: {{ $p.path }}
  port: m2m-metrics
periodSeconds: {{ int $p.periodSeconds }}
timeoutSeconds: {{ int $p.timeoutSeconds }}
failureThreshold: {{ int $p.failureThreshold }}
{{- end -}}

{{- define "m2m-proxy.impl.container" -}}
{{- include "m2m-proxy.validate" . -}}
{{- $v := .Values -}}
- name: {{ $v.sidecar.name }}
  image: {{ include "m2m-proxy.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if eq $v.sidecar.mode "native" }}
  # A native sidecar (Kubernetes >= 1.29): started before, and stopped after, the app containers.
  restartPolicy: Always
  {{- end }}
  args: ["--config", "/etc/m2m-proxy/m2m-proxy.yaml"]
  {{- with $v.sidecar.extraEnv }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: m2m-metrics
      containerPort: {{ int $v.admin.port }}
      protocol: TCP
  {{- if $v.probes.startup.enabled }}
  startupProbe:
    {{- include "m2m-proxy.probe" (dict "probe" $v.probes.startup) | nindent 4 }}
  {{- end }}
  {{- if $v.probes.liveness.enabled }}
  livenessProbe:
    {{- include "m2m-proxy.probe" (dict "probe" $v.probes.liveness) | nindent 4 }}
  {{- end }}
  {{- if $v.probes.readiness.enabled }}
  readinessProbe:
    {{- include "m2m-proxy.probe" (dict "probe" $v.probes.readiness) | nindent 4 }}
  {{- end }}
  {{- if and (eq $v.sidecar.mode "classic") (gt (int $v.sidecar.preStopSleepSeconds) 0) }}
  lifecycle:
    preStop:
      sleep:
        seconds: {{ int $v.sidecar.preStopSleepSeconds }}
  {{- end }}
  {{- with $v.sidecar.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.sidecar.securityContext | nindent 4 }}
  volumeMounts:
    - name: {{ $v.sidecar.name }}-config
      mountPath: /etc/m2m-proxy
      readOnly: true
    - name: {{ $v.sidecar.name }}-credentials
      mountPath: {{ $v.credentials.mountPath }}
      readOnly: true
    {{- if and $v.rateLimit.shared.enabled $v.rateLimit.shared.password.existingSecret }}
    - name: {{ $v.sidecar.name }}-redis
      mountPath: {{ $v.rateLimit.shared.password.mountPath }}
      readOnly: true
    {{- end }}
    {{- if or $v.upstream.ca.configMap $v.upstream.ca.secret }}
    - name: {{ $v.sidecar.name }}-ca
      mountPath: /etc/m2m-proxy-ca
      readOnly: true
    {{- end }}
{{- end -}}

{{- define "m2m-proxy.impl.nativeSidecar" -}}
{{- if eq .Values.sidecar.mode "native" }}{{ include "m2m-proxy.impl.container" . }}{{ end -}}
{{- end -}}

{{- define "m2m-proxy.impl.classicSidecar" -}}
{{- if eq .Values.sidecar.mode "classic" }}{{ include "m2m-proxy.impl.container" . }}{{ end -}}
{{- end -}}

{{/*
Directory mounts (no subPath): Kubernetes swaps a mounted Secret atomically through its ..data
link, and the proxy re-reads the credential files when that happens. 292 = 0444: the files are
readable by the proxy's non-root user whatever the pod's fsGroup.
*/}}
{{- define "m2m-proxy.impl.volumes" -}}
{{- $v := .Values -}}
{{- $files := include "m2m-proxy.credentialFiles" . | fromJson -}}
- name: {{ $v.sidecar.name }}-config
  configMap:
    name: {{ include "m2m-proxy.fullname" . }}
- name: {{ $v.sidecar.name }}-credentials
  secret:
    secretName: {{ include "m2m-proxy.credentialsSecretName" . }}
    defaultMode: 292
    items:
      {{- range $part, $key := include "m2m-proxy.credentialKeys" . | fromJson }}
      - key: {{ $key }}
        path: {{ index $files $part }}
      {{- end }}
{{- if and $v.rateLimit.shared.enabled $v.rateLimit.shared.password.existingSecret }}
- name: {{ $v.sidecar.name }}-redis
  secret:
    secretName: {{ $v.rateLimit.shared.password.existingSecret }}
    defaultMode: 292
    items:
      - key: {{ $v.rateLimit.shared.password.key }}
        path: password
{{- end }}
{{- if $v.upstream.ca.configMap }}
- name: {{ $v.sidecar.name }}-ca
  configMap:
    name: {{ $v.upstream.ca.configMap }}
    items:
      - key: {{ $v.upstream.ca.key }}
        path: {{ $v.upstream.ca.key }}
{{- else if $v.upstream.ca.secret }}
- name: {{ $v.sidecar.name }}-ca
  secret:
    secretName: {{ $v.upstream.ca.secret }}
    defaultMode: 292
    items:
      - key: {{ $v.upstream.ca.key }}
        path: {{ $v.upstream.ca.key }}
{{- end }}
{{- end -}}
