/** The live dashboard: tiles, charts, services, routes, consumers, upstream health, scaling. */
import { useState } from 'preact/hooks';
import type { ComponentChildren, Ref } from 'preact';
import { Chart, type Line } from '../chart.js';
import { useLive, type Live, type LiveState, type ScalingReport } from '../live.js';
import { DASH, int, ms, num, percent, rate, when } from '../format.js';

const RPS: Line[] = [{ label: 'Requests/s', stroke: '#1f5fbf' }];
const LATENCY: Line[] = [
  { label: 'p50', stroke: '#1e7a34' },
  { label: 'p95', stroke: '#a05a00', dash: [8, 4] },
  { label: 'p99', stroke: '#b3261e', dash: [2, 3] },
];
const REPLICAS: Line[] = [
  { label: 'Desired', stroke: '#6b3fa0' },
  { label: 'Current', stroke: '#1f5fbf', dash: [8, 4] },
];

const STATUS_TEXT = { connecting: 'Connecting…', live: 'Live', reconnecting: 'Reconnecting…', closed: 'Disconnected' } as const;

function Tile({ id, label, value, unit }: { id: string; label: string; value: string; unit?: string }) {
  return (
    <div class="tile">
      <dt>{label}</dt>
      <dd>
        <span class="tile-value" data-testid={`tile-${id}`}>{value}</span>
        {unit && value !== DASH ? <span class="tile-unit"> {unit}</span> : null}
      </dd>
    </div>
  );
}

function Section({ id, title, children, testid }: { id: string; title: string; children: ComponentChildren; testid?: string }) {
  return (
    <section class="panel" aria-labelledby={id} data-testid={testid}>
      <h3 id={id}>{title}</h3>
      {children}
    </section>
  );
}

export function Dashboard({ live, titleRef }: { live: Live; titleRef: Ref<HTMLHeadingElement> }) {
  const st = useLive(live);
  const s = st.stats;
  const t = s?.totals;
  const window = s?.window === '1m' || !s?.window ? 'last minute' : s.window;
  return (
    <>
      <h2 id="view-title" tabIndex={-1} ref={titleRef}>Dashboard</h2>
      <p class="stream">
        <span class={`dot dot-${st.status}`} aria-hidden="true" />
        <span data-testid="stream-status">{STATUS_TEXT[st.status]}</span>
        {' · '}Updates received: <span data-testid="events-received">{st.events}</span>
        {s ? <> · Last update: <time dateTime={s.at}>{when(s.at)}</time></> : null}
      </p>
      {st.problem ? <p class="error" role="alert">{st.problem}</p> : null}

      <Section id="h-now" title="Right now">
        <dl class="tiles" aria-live="polite" data-testid="tiles">
          <Tile id="rps" label="Requests/s" value={rate(t?.rps)} />
          <Tile id="errors" label="Error rate" value={percent(t?.error_rate)} unit="%" />
          <Tile id="p50" label="Latency p50" value={ms(t?.p50_ms)} unit="ms" />
          <Tile id="p95" label="Latency p95" value={ms(t?.p95_ms)} unit="ms" />
          <Tile id="p99" label="Latency p99" value={ms(t?.p99_ms)} unit="ms" />
          <Tile id="in-flight" label="In flight" value={int(t?.in_flight)} />
          <Tile id="rate-limited" label="Rate-limited/s" value={rate(t?.rate_limited_per_s)} />
        </dl>
        <p class="note">Rates and percentiles over the {window}; in flight: now.</p>
        {s?.analytics === false ? <p class="note" data-testid="analytics-off">Analytics are disabled on this gateway (<code>analytics.enabled: false</code>): rates and percentiles are not recorded.</p> : null}
      </Section>

      <Section id="h-charts" title="Last 5 minutes">
        <div class="charts">
          <Chart testid="chart-rps" title="Requests per second" unit="req/s" digits={2} lines={RPS} series={live.rps} version={st.version} />
          <Chart testid="chart-latency" title="Latency (ms)" unit="ms" lines={LATENCY} series={live.latency} version={st.version} />
        </div>
      </Section>

      <div class="columns">
        <Section id="h-services" title="Services" testid="services">
          {s && s.services.length ? (
            <div class="table-wrap">
              <table aria-labelledby="h-services">
                <thead><tr><th scope="col">Service</th><th scope="col" class="n">Requests/s</th><th scope="col" class="n">Errors %</th><th scope="col" class="n">p95 ms</th></tr></thead>
                <tbody>
                  {s.services.map((v) => (
                    <tr key={v.name} data-testid={`service-row-${v.name}`}>
                      <th scope="row">{v.name}</th><td class="n">{rate(v.rps)}</td><td class="n">{percent(v.error_rate)}</td><td class="n">{ms(v.p95_ms)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          ) : <p class="empty">No traffic in the {window}.</p>}
        </Section>

        <Section id="h-routes" title="Routes" testid="route-stats">
          {s && s.routes.length ? (
            <div class="table-wrap">
              <table aria-labelledby="h-routes">
                <thead><tr><th scope="col">Route</th><th scope="col">Service</th><th scope="col" class="n">Requests/s</th><th scope="col" class="n">Errors %</th><th scope="col" class="n">p95 ms</th></tr></thead>
                <tbody>
                  {s.routes.map((r) => (
                    <tr key={`${r.service ?? ''}/${r.name}`} data-testid={`route-stats-row-${r.name}`}>
                      <th scope="row">{r.name}</th><td>{r.service ?? DASH}</td><td class="n">{rate(r.rps)}</td><td class="n">{percent(r.error_rate)}</td><td class="n">{ms(r.p95_ms)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          ) : <p class="empty">No traffic in the {window}.</p>}
        </Section>

        <Section id="h-consumers" title="Top consumers" testid="top-consumers">
          {s && s.top_consumers.length ? (
            <ol class="consumers">
              {s.top_consumers.map((c) => (
                <li key={c.consumer}><span class="name">{c.consumer}</span> <span class="count">{c.requests} requests</span></li>
              ))}
            </ol>
          ) : <p class="empty">No identified consumers in the {window}.</p>}
        </Section>

        <Section id="h-upstreams" title="Upstream health" testid="upstreams">
          {s ? (
            <>
              <p class={s.upstreams.targets_down.length ? 'health bad' : 'health good'} data-testid="upstreams-summary">
                {s.upstreams.targets_up} of {s.upstreams.targets} targets up
              </p>
              {s.upstreams.targets_down.length ? (
                <>
                  <p>Down:</p>
                  <ul data-testid="targets-down">{s.upstreams.targets_down.map((n) => <li key={n}>{n}</li>)}</ul>
                </>
              ) : s.upstreams.targets ? <p class="note">All targets are healthy.</p> : <p class="note">No health checks report yet.</p>}
            </>
          ) : <p class="empty">Waiting for the first update…</p>}
        </Section>
      </div>

      {st.scaling ? <Scaling live={live} report={st.scaling} st={st} /> : null}
    </>
  );
}

function Scaling({ live, report, st }: { live: Live; report: ScalingReport; st: LiveState }) {
  const names = report.services.map((s) => s.name);
  const [chosen, setChosen] = useState<string | null>(null);
  const service = chosen !== null && names.includes(chosen) ? chosen : names[0];
  const history = service !== undefined ? live.scalingHistory.get(service) : undefined;
  return (
    <Section id="h-scaling" title="Scaling" testid="scaling">
      {report.services.length ? (
        <div class="table-wrap">
          <table aria-labelledby="h-scaling">
            <thead>
              <tr><th scope="col">Service</th><th scope="col" class="n">Current</th><th scope="col" class="n">Desired</th><th scope="col">Mode</th><th scope="col">Reason</th><th scope="col" class="n">Requests/s</th><th scope="col" class="n">Concurrency</th></tr>
            </thead>
            <tbody>
              {report.services.map((v) => (
                <tr key={v.name} data-testid={`scaling-row-${v.name}`}>
                  <th scope="row">{v.name}</th>
                  <td class="n">{int(v.current_replicas)}</td>
                  <td class="n">{int(v.desired_replicas)}</td>
                  <td>{v.mode ?? DASH}</td>
                  <td class="reason">{v.reason ?? DASH}</td>
                  <td class="n">{rate(v.signals?.rps)}</td>
                  <td class="n">{num(v.signals?.concurrency, 1)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : <p class="empty">No service has scaling configured.</p>}
      {report.gateway?.desired_nodes !== undefined ? (
        <p class="note">Gateway: {report.gateway.desired_nodes} node(s) desired{report.gateway.reason ? ` (${report.gateway.reason})` : ''}.</p>
      ) : null}
      {service !== undefined && history ? (
        <>
          {names.length > 1 ? (
            <p class="field-inline">
              <label for="scaling-service">Service</label>{' '}
              <select id="scaling-service" value={service} onChange={(e) => setChosen((e.currentTarget as HTMLSelectElement).value)}>
                {names.map((n) => <option key={n} value={n}>{n}</option>)}
              </select>
            </p>
          ) : null}
          <Chart key={service} testid="chart-scaling" title={`Replicas of ${service}: desired and current`} unit="" digits={0}
            lines={REPLICAS} series={history} version={st.version} height={160} />
        </>
      ) : null}
    </Section>
  );
}
