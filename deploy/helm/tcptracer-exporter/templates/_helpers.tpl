{{- /*
Names and labels shared by the templates.

The name: nameOverride, else the chart's name; it is the app.kubernetes.io/name label. The full name,
which names the objects: fullnameOverride, else the release name when it already contains the name,
else "<release>-<name>". Both are cut to 57 characters, so that "<name>-unpin" still fits a label
value (63).
*/ -}}
{{- define "tcptracer-exporter.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 57 | trimSuffix "-" -}}
{{- end -}}

{{- define "tcptracer-exporter.fullname" -}}
{{- $name := include "tcptracer-exporter.name" . -}}
{{- $full := .Values.fullnameOverride -}}
{{- if not $full -}}
{{- $full = ternary .Release.Name (printf "%s-%s" .Release.Name $name) (contains $name .Release.Name) -}}
{{- end -}}
{{- $full | trunc 57 | trimSuffix "-" -}}
{{- end -}}

{{- /* What the DaemonSet, the Service and the monitors select the exporter's pods by. */ -}}
{{- define "tcptracer-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tcptracer-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- /* Every object's labels: the selector labels and Helm's. */ -}}
{{- define "tcptracer-exporter.labels" -}}
{{ include "tcptracer-exporter.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "tcptracer-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "tcptracer-exporter.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- /* The exporter's image, which every container of the chart runs: by digest when one is given. */ -}}
{{- define "tcptracer-exporter.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) -}}
{{- end -}}
{{- end -}}

{{- /* Where the exporter's container mounts the node's pin directory, and what --bpf.pin-path names. */ -}}
{{- define "tcptracer-exporter.pinMountPath" -}}
/run/tcptracer-exporter
{{- end -}}

{{- /* Where the web config Secret is mounted. */ -}}
{{- define "tcptracer-exporter.webConfigDir" -}}
/etc/tcptracer-exporter-web
{{- end -}}

{{- /*
The exporter's arguments. The flags the chart sets may not come again in extraArgs: the last one
would win without a word.
*/ -}}
{{- define "tcptracer-exporter.args" -}}
{{- range .Values.extraArgs -}}
{{- $flag := regexReplaceAll "=.*$" (toString .) "" -}}
{{- if has $flag (list "--config.file" "--web.listen-address" "--web.config.file" "--bpf.pin-path") -}}
{{- fail (printf "extraArgs: %s is set by the chart (see values.yaml: config, port, webConfig, bpf.pinPath)" $flag) -}}
{{- end -}}
{{- end -}}
- run
- --config.file=/etc/tcptracer-exporter/config.yaml
- --web.listen-address=:{{ .Values.port }}
{{- if .Values.webConfig.secretName }}
- --web.config.file={{ include "tcptracer-exporter.webConfigDir" . }}/{{ .Values.webConfig.key }}
{{- end }}
{{- if .Values.bpf.pinPath }}
# the bpf-state volume: the node's {{ .Values.bpf.pinPath }}
- --bpf.pin-path={{ include "tcptracer-exporter.pinMountPath" . }}
{{- else }}
# not pinned: a restart resets the counters
- --bpf.pin-path=
{{- end }}
{{- range .Values.extraArgs }}
- {{ toString . | quote }}
{{- end }}
{{- end -}}

{{- /*
The security context of a container that runs the image's node: as the exporter's user, which the
Dockerfile creates, and with the four capabilities the image gives node as file capabilities, without
which it cannot even be executed.
*/ -}}
{{- define "tcptracer-exporter.nodeCapabilities" -}}
drop:
  - ALL
add:
  - BPF
  - PERFMON
  - SYS_PTRACE
  - DAC_READ_SEARCH
{{- end -}}
