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

{{/* ============================== routes ============================== */}}

{{/*
.over laid over .base, key by key into nested maps, as JSON. Unlike sprig's merge, a zero or
empty value in .over wins (a route's `perSecond: 0` turns its pacing off).
*/}}
{{- define "m2m-proxy.overlay" -}}
{{- $out := deepCopy (.base | default dict) -}}
{{- range $k, $v := (.over | default dict) -}}
{{- if and (kindIs "map" $v) (kindIs "map" (index $out $k)) -}}
{{- $_ := set $out $k (include "m2m-proxy.overlay" (dict "base" (index $out $k) "over" $v) | fromJson) -}}
{{- else -}}
{{- $_ := set $out $k $v -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/*
The routes the proxy serves, as JSON {"routes": [...]}. Each has its name, port, host (only when
the route sets one), upstream, token and rateLimit (the route's keys laid over the top-level
blocks), credentials, keys ({part: key in the Secret}), secretName, volumeName, mountPath and
path (the values path that error messages name). Without `routes`: one route "default" from
the top-level blocks, mounted and named exactly as the chart did before routes existed.
*/}}
{{- define "m2m-proxy.resolvedRoutes" -}}
{{- $v := .Values -}}
{{- $files := include "m2m-proxy.credentialFiles" . | fromJson -}}
{{- $secretName := include "m2m-proxy.credentialsSecretName" . -}}
{{- $routes := list -}}
{{- if $v.routes -}}
{{- $chartSecret := printf "%s-credentials" (include "m2m-proxy.fullname" .) -}}
{{- range $i, $r := $v.routes -}}
{{- $c := include "m2m-proxy.overlay" (dict "base" (dict "existingSecret" "" "existingSecretKeys" dict "inline" dict "keyId" "") "over" $r.credentials) | fromJson -}}
{{- $keys := dict -}}
{{- range $part := list "authorization" "clientId" "clientSecret" "privateKey" -}}
{{- if $c.existingSecret -}}
{{- with index $c.existingSecretKeys $part -}}{{- $_ := set $keys $part . -}}{{- end -}}
{{- else if index $c.inline $part -}}
{{- $_ := set $keys $part (printf "%s.%s" $r.name (index $files $part)) -}}
{{- end -}}
{{- end -}}
{{- $route := dict
  "name" $r.name
  "port" $r.port
  "upstream" (include "m2m-proxy.overlay" (dict "base" $v.upstream "over" $r.upstream) | fromJson)
  "token" (include "m2m-proxy.overlay" (dict "base" $v.token "over" $r.token) | fromJson)
  "rateLimit" (include "m2m-proxy.overlay" (dict "base" $v.rateLimit "over" $r.rateLimit) | fromJson)
  "credentials" $c
  "keys" $keys
  "secretName" ($c.existingSecret | default $chartSecret)
  "volumeName" (printf "%s-credentials-%s" $v.sidecar.name $r.name)
  "mountPath" (printf "%s/%s" (trimSuffix "/" $v.credentials.mountPath) $r.name)
  "path" (printf "routes[%d]." $i)
-}}
{{- with $r.host -}}{{- $_ := set $route "host" . -}}{{- end -}}
{{- $routes = append $routes $route -}}
{{- end -}}
{{- else -}}
{{- $routes = list (dict
  "name" "default"
  "port" $v.listen.port
  "upstream" $v.upstream
  "token" $v.token
  "rateLimit" $v.rateLimit
  "credentials" $v.credentials
  "keys" (include "m2m-proxy.credentialKeys" . | fromJson)
  "secretName" $secretName
  "volumeName" (printf "%s-credentials" $v.sidecar.name)
  "mountPath" $v.credentials.mountPath
  "path" ""
) -}}
{{- end -}}
{{- toJson (dict "routes" $routes) -}}
{{- end -}}

{{/* A route's container port name: m2m-<route> when that is a valid port name, else none. */}}
{{- define "m2m-proxy.routePortName" -}}
{{- $name := printf "m2m-%s" . -}}
{{- if and (le (len $name) 15) (not (contains "--" $name)) (not (hasSuffix "-" $name)) -}}
{{- $name -}}
{{- end -}}
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

{{/* The inline credential parts set in a credentials block (.), comma-separated. */}}
{{- define "m2m-proxy.inlineParts" -}}
{{- $set := list -}}
{{- range $part, $value := .inline -}}
{{- if $value -}}{{- $set = append $set $part -}}{{- end -}}
{{- end -}}
{{- join "," $set -}}
{{- end -}}

{{- define "m2m-proxy.inlineCredentials" -}}
{{- include "m2m-proxy.inlineParts" .Values.credentials -}}
{{- end -}}

{{/*
The chart's credentials Secret, as JSON {key: value}: the inline parts of the top-level
credentials (keys: the file names) or, with routes, of every route (keys: <route>.<file>).
Empty when every credential comes from an existing Secret.
*/}}
{{- define "m2m-proxy.inlineSecretData" -}}
{{- $data := dict -}}
{{- range $route := (include "m2m-proxy.resolvedRoutes" . | fromJson).routes -}}
{{- if not $route.credentials.existingSecret -}}
{{- range $part, $key := $route.keys -}}
{{- $_ := set $data $key (index $route.credentials.inline $part) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $data -}}
{{- end -}}

{{/* ============================== validation ============================== */}}

{{/*
What is wrong with one resolved route (.), as a JSON list of messages, each starting with the
values path (routes[1].token.url ...; nothing before it for the top-level blocks).
*/}}
{{- define "m2m-proxy.routeErrors" -}}
{{- $p := .path -}}
{{- $errors := list -}}
{{- if not .upstream.url -}}
{{- $errors = append $errors (printf "%supstream.url is required (e.g. https://api.example.com/api/v1)" $p) -}}
{{- else if regexMatch `^https?://[^/]*@` .upstream.url -}}
{{- $errors = append $errors (printf "%supstream.url must not contain credentials" $p) -}}
{{- end -}}
{{- if not .token.url -}}
{{- $errors = append $errors (printf "%stoken.url is required (the OAuth 2.0 token endpoint)" $p) -}}
{{- end -}}
{{- $c := .credentials -}}
{{- $inline := include "m2m-proxy.inlineParts" $c -}}
{{- $keys := .keys -}}
{{- if and $c.existingSecret $inline -}}
{{- $errors = append $errors (printf "%scredentials: use %scredentials.existingSecret or %scredentials.inline, not both (inline has %s)" $p $p $p $inline) -}}
{{- else if and (not $c.existingSecret) (not $inline) -}}
{{- $errors = append $errors (printf "%scredentials: none given; set %scredentials.existingSecret and %scredentials.existingSecretKeys, or %scredentials.inline" $p $p $p $p) -}}
{{- else if and $c.existingSecret (not $keys) -}}
{{- $errors = append $errors (printf "%scredentials.existingSecretKeys: map at least one part (authorization, or clientId + clientSecret, or clientId + privateKey) to a key of the Secret" $p) -}}
{{- else -}}
{{- $forms := 0 -}}
{{- range $part := list "authorization" "clientSecret" "privateKey" -}}
{{- if hasKey $keys $part -}}{{- $forms = add1 $forms -}}{{- end -}}
{{- end -}}
{{- if gt $forms 1 -}}
{{- $errors = append $errors (printf "%scredentials: use exactly one form: authorization, clientId + clientSecret, or clientId + privateKey" $p) -}}
{{- end -}}
{{- if and (or (hasKey $keys "clientSecret") (hasKey $keys "privateKey")) (not (hasKey $keys "clientId")) -}}
{{- $errors = append $errors (printf "%scredentials: clientId is required with clientSecret or privateKey" $p) -}}
{{- end -}}
{{- if and (hasKey $keys "clientId") (eq $forms 0) -}}
{{- $errors = append $errors (printf "%scredentials: clientId needs clientSecret or privateKey beside it" $p) -}}
{{- end -}}
{{- if and (hasKey $keys "privateKey") (ne .token.authMethod "private_key_jwt") -}}
{{- $errors = append $errors (printf "%stoken.authMethod must be private_key_jwt when a privateKey is given" $p) -}}
{{- end -}}
{{- if and (eq .token.authMethod "private_key_jwt") (not (hasKey $keys "privateKey")) -}}
{{- $errors = append $errors (printf "%stoken.authMethod private_key_jwt needs credentials privateKey (and clientId)" $p) -}}
{{- end -}}
{{- end -}}
{{- if and $c.keyId (not (hasKey $keys "privateKey")) -}}
{{- $errors = append $errors (printf "%scredentials.keyId is only used with a privateKey" $p) -}}
{{- end -}}
{{- if gt (include "m2m-proxy.durationMs" .token.retry.min | float64) (include "m2m-proxy.durationMs" .token.retry.max | float64) -}}
{{- $errors = append $errors (printf "%stoken.retry.min must not be greater than %stoken.retry.max" $p $p) -}}
{{- end -}}
{{- $shared := .rateLimit.shared -}}
{{- if $shared.enabled -}}
{{- if not $shared.redis -}}
{{- $errors = append $errors (printf "%srateLimit.shared.redis is required when %srateLimit.shared.enabled (e.g. redis://redis:6379/0)" $p $p) -}}
{{- else if regexMatch `^rediss?://[^/@]*:[^/@]*@` $shared.redis -}}
{{- $errors = append $errors (printf "%srateLimit.shared.redis must not contain a password; use rateLimit.shared.password.existingSecret" $p) -}}
{{- end -}}
{{- end -}}
{{- toJson $errors -}}
{{- end -}}

{{/*
Refuses impossible combinations, listing every problem at once (as the proxy's --check does).
values.schema.json refuses wrong types and shapes; this catches what spans several values.
*/}}
{{- define "m2m-proxy.validate" -}}
{{- $v := .Values -}}
{{- $errors := list -}}
{{- $routes := (include "m2m-proxy.resolvedRoutes" . | fromJson).routes -}}
{{- if $v.routes -}}
{{- /* Each route names its own API, token endpoint and client: nothing to inherit there. */ -}}
{{- if $v.upstream.url -}}
{{- $errors = append $errors "upstream.url: leave it empty with routes (each route has its own routes[].upstream.url)" -}}
{{- end -}}
{{- if $v.token.url -}}
{{- $errors = append $errors "token.url: leave it empty with routes (each route has its own routes[].token.url)" -}}
{{- end -}}
{{- if or $v.credentials.existingSecret (include "m2m-proxy.inlineCredentials" .) -}}
{{- $errors = append $errors "credentials: leave credentials.existingSecret and credentials.inline empty with routes (each route has its own routes[].credentials)" -}}
{{- end -}}
{{- $names := list -}}
{{- $ports := list -}}
{{- $budgets := dict -}}
{{- range $route := $routes -}}
{{- if has $route.name $names -}}
{{- $errors = append $errors (printf "%sname: %s is the name of an earlier route (names must be unique)" $route.path $route.name) -}}
{{- end -}}
{{- $names = append $names $route.name -}}
{{- if has (int $route.port) $ports -}}
{{- $errors = append $errors (printf "%sport: %d is the port of an earlier route (ports must be unique)" $route.path (int $route.port)) -}}
{{- end -}}
{{- $ports = append $ports (int $route.port) -}}
{{- if eq (int $route.port) (int $v.admin.port) -}}
{{- $errors = append $errors (printf "%sport: must differ from admin.port (%d)" $route.path (int $v.admin.port)) -}}
{{- end -}}
{{- $shared := $route.rateLimit.shared -}}
{{- if and $shared.enabled $shared.redis $route.upstream.url -}}
{{- /* One Redis key is one budget: the proxy refuses routes that describe it differently. */ -}}
{{- $key := include "m2m-proxy.sharedKeyOf" $route -}}
{{- $r := $route.rateLimit -}}
{{- $budget := toJson (list (float64 $r.perSecond) (int $r.burst) (int $r.window.max) (include "m2m-proxy.durationMs" $r.window.length | float64) $shared.redis (toJson $shared.fallback)) -}}
{{- with index $budgets $key -}}
{{- if ne .budget $budget -}}
{{- $errors = append $errors (printf "%srateLimit: shares rateLimit.shared.key %q with %s and must then have the same perSecond, burst, window and shared settings" $route.path $key (trimSuffix "." .path)) -}}
{{- end -}}
{{- else -}}
{{- $_ := set $budgets $key (dict "budget" $budget "path" $route.path) -}}
{{- end -}}
{{- end -}}
{{- if gt (len $route.volumeName) 63 -}}
{{- $errors = append $errors (printf "%sname: the volume name %s is longer than 63 characters; shorten the route name or sidecar.name" $route.path $route.volumeName) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $route := $routes -}}
{{- $errors = concat $errors (include "m2m-proxy.routeErrors" $route | fromJsonArray) -}}
{{- end -}}
{{- if and $v.upstream.ca.configMap $v.upstream.ca.secret -}}
{{- $errors = append $errors "upstream.ca: use configMap or secret, not both" -}}
{{- end -}}
{{- if and (has $v.admin.host (list "127.0.0.1" "localhost" "::1")) (or $v.probes.startup.enabled $v.probes.liveness.enabled $v.probes.readiness.enabled) -}}
{{- $errors = append $errors (printf "admin.host %s is loopback: the kubelet's probes and Prometheus cannot reach it (use 0.0.0.0 or turn the probes off)" $v.admin.host) -}}
{{- end -}}
{{- if and (not $v.routes) (eq (int $v.listen.port) (int $v.admin.port)) -}}
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

{{/*
A resolved route's upstream, token and rateLimit blocks as the proxy reads them, as JSON.
.route: the route; .values: the chart's values (the CA and the Redis password are global).
*/}}
{{- define "m2m-proxy.routeBlocks" -}}
{{- $v := .values -}}
{{- $route := .route -}}
{{- $files := include "m2m-proxy.credentialFiles" . | fromJson -}}
{{- $upstream := dict "url" $route.upstream.url "timeout" $route.upstream.timeout -}}
{{- if or $v.upstream.ca.configMap $v.upstream.ca.secret -}}
{{- $_ := set $upstream "caFile" (printf "/etc/m2m-proxy-ca/%s" $v.upstream.ca.key) -}}
{{- end -}}
{{- $credentials := dict -}}
{{- range $part, $key := $route.keys -}}
{{- $_ := set $credentials (printf "%sFile" $part) (printf "%s/%s" (trimSuffix "/" $route.mountPath) (index $files $part)) -}}
{{- end -}}
{{- with $route.credentials.keyId -}}{{- $_ := set $credentials "keyId" . -}}{{- end -}}
{{- $t := $route.token -}}
{{- $token := dict "url" $t.url "authMethod" $t.authMethod "credentials" $credentials "timeout" $t.timeout "refreshAt" $t.refreshAt "minRemaining" $t.minRemaining "retry" (dict "min" $t.retry.min "max" $t.retry.max) -}}
{{- range $k := list "scope" "audience" "resource" -}}
{{- with index $t $k -}}{{- $_ := set $token $k . -}}{{- end -}}
{{- end -}}
{{- with $t.params -}}{{- $_ := set $token "params" . -}}{{- end -}}
{{- $r := $route.rateLimit -}}
{{- $rateLimit := dict "perSecond" $r.perSecond "burst" $r.burst "window" (dict "max" $r.window.max "length" $r.window.length) "queue" (dict "max" $r.queue.max "timeout" $r.queue.timeout) -}}
{{- if $r.shared.enabled -}}
{{- $shared := dict "redis" $r.shared.redis "key" (include "m2m-proxy.sharedKeyOf" $route) -}}
{{- /* Unset: the proxy's default, each replica's share of the fleet (1 / replicas last seen). */ -}}
{{- if not (kindIs "invalid" $r.shared.fallback) -}}{{- $_ := set $shared "fallback" $r.shared.fallback -}}{{- end -}}
{{- if $v.rateLimit.shared.password.existingSecret -}}
{{- $_ := set $shared "passwordFile" (printf "%s/password" (trimSuffix "/" $v.rateLimit.shared.password.mountPath)) -}}
{{- end -}}
{{- $_ := set $rateLimit "shared" $shared -}}
{{- end -}}
{{- toJson (dict "upstream" $upstream "token" $token "rateLimit" $rateLimit) -}}
{{- end -}}

{{/* ============================== the proxy's configuration ============================== */}}

{{/* m2m-proxy.yaml (docs/configuration.md), in its key order. */}}
{{- define "m2m-proxy.configYaml" -}}
{{- $v := .Values -}}
{{- /* With routes, one entry per route replaces the top-level upstream, token and rateLimit. */ -}}
{{- $routes := (include "m2m-proxy.resolvedRoutes" . | fromJson).routes -}}
{{- $blocks := dict -}}
{{- if not $v.routes -}}
{{- $blocks = include "m2m-proxy.routeBlocks" (dict "route" (first $routes) "values" $v) | fromJson -}}
{{- end -}}
# Rendered by the m2m-proxy Helm chart from its values; see docs/configuration.md in the m2m-proxy repository.
listen:
{{- if $v.routes }}
  host: {{ $v.listen.host }}
{{- else }}
  {{- toYaml (dict "host" $v.listen.host "port" $v.listen.port) | nindent 2 }}
{{- end }}
admin:
  {{- toYaml (dict "host" $v.admin.host "port" $v.admin.port) | nindent 2 }}
{{- if $v.routes }}
routes:
{{- range $route := $routes }}
{{- $blocks := include "m2m-proxy.routeBlocks" (dict "route" $route "values" $v) | fromJson }}
  - name: {{ $route.name }}
    listen:
      {{- with $route.host }}
      host: {{ . }}
      {{- end }}
      port: {{ int $route.port }}
    upstream:
      {{- toYaml $blocks.upstream | nindent 6 }}
    token:
      {{- toYaml $blocks.token | nindent 6 }}
    rateLimit:
      {{- toYaml $blocks.rateLimit | nindent 6 }}
{{- end }}
{{- else }}
upstream:
  {{- toYaml $blocks.upstream | nindent 2 }}
token:
  {{- toYaml $blocks.token | nindent 2 }}
rateLimit:
  {{- toYaml $blocks.rateLimit | nindent 2 }}
{{- end }}
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

{{/* A resolved route's rateLimit.shared.key, defaulting to m2m-proxy:<its upstream host>. */}}
{{- define "m2m-proxy.sharedKeyOf" -}}
{{- .rateLimit.shared.key | default (printf "m2m-proxy:%s" (urlParse .upstream.url).host) -}}
{{- end -}}

{{/* "true" when a route uses the shared budget and the Redis password comes from a Secret. */}}
{{- define "m2m-proxy.mountsRedisPassword" -}}
{{- if .Values.rateLimit.shared.password.existingSecret -}}
{{- range $route := (include "m2m-proxy.resolvedRoutes" . | fromJson).routes -}}
{{- if $route.rateLimit.shared.enabled }}true{{ break }}{{ end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* rateLimit.shared.key, defaulting to m2m-proxy:<upstream host>. */}}
{{- define "m2m-proxy.sharedKey" -}}
{{- include "m2m-proxy.sharedKeyOf" .Values -}}
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
{{- $routes := (include "m2m-proxy.resolvedRoutes" . | fromJson).routes -}}
- name: {{ $v.sidecar.name }}
  image: {{ include "m2m-proxy.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if eq $v.sidecar.mode "native" }}
  # A native sidecar (Kubernetes >= 1.29): started before, and stopped after, the app containers.
  restartPolicy: Always
  {{- end }}
  args: ["--config", "/etc/m2m-proxy/m2m-proxy.yaml"]
  {{- if or $v.sidecar.extraEnv $v.sidecar.mallocArenaMax }}
  env:
    {{- with $v.sidecar.mallocArenaMax }}
    # Fewer glibc malloc arenas: less resident memory (the image sets the same by default).
    - name: MALLOC_ARENA_MAX
      value: {{ . | int | toString | quote }}
    {{- end }}
    {{- with $v.sidecar.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  ports:
    - name: m2m-metrics
      containerPort: {{ int $v.admin.port }}
      protocol: TCP
    {{- if $v.routes }}
    {{- /* One port per route (loopback by default: declared so that it is visible and documented). */}}
    {{- range $route := $routes }}
    {{- $name := include "m2m-proxy.routePortName" $route.name }}
    {{- if $name }}
    - name: {{ $name }}
      containerPort: {{ int $route.port }}
    {{- else }}
    - containerPort: {{ int $route.port }}
    {{- end }}
      protocol: TCP
    {{- end }}
    {{- end }}
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
    {{- range $route := $routes }}
    - name: {{ $route.volumeName }}
      mountPath: {{ $route.mountPath }}
      readOnly: true
    {{- end }}
    {{- if include "m2m-proxy.mountsRedisPassword" . }}
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
{{- range $route := (include "m2m-proxy.resolvedRoutes" . | fromJson).routes }}
- name: {{ $route.volumeName }}
  secret:
    secretName: {{ $route.secretName }}
    defaultMode: 292
    items:
      {{- range $part, $key := $route.keys }}
      - key: {{ $key }}
        path: {{ index $files $part }}
      {{- end }}
{{- end }}
{{- if include "m2m-proxy.mountsRedisPassword" . }}
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
