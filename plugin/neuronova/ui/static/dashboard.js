/*
 * NeuroNova RIS dashboard (/neuronova/app/index.html): the storage panel, the study list and the upload dialog.
 * Relative URLs only, so the page works behind a reverse proxy prefix; the browser's Orthanc login
 * (HTTP Basic) is sent with every same-origin request.
 */
(function (window, document) {
  'use strict';

  var PAGE_BASE = new URL('./', window.location.href).href;          // <prefix>/neuronova/app/
  var ORTHANC_ROOT = new URL('../../', PAGE_BASE).href;               // <prefix>/
  var STUDIES_URL = new URL('../studies?limit=200', PAGE_BASE).href;  // <prefix>/neuronova/studies
  var STORAGE_URL = new URL('../storage', PAGE_BASE).href;            // <prefix>/neuronova/storage
  var COMPRESS_URL = new URL('../storage/compress', PAGE_BASE).href;  // <prefix>/neuronova/storage/compress
  var STATISTICS_URL = new URL('statistics', ORTHANC_ROOT).href;      // <prefix>/statistics
  var AUTO_REFRESH_MS = 30000;
  var I18N = window.NeuroNovaI18n;
  var t = I18N.t;
  var plural = I18N.plural;
  var JOB_POLL_MS = 2000;

  var studies = [];
  var viewer = null;  // the plugin's word on the OHIF Viewer: {available, version} or {available: false, error}
  var known = null;  // study IDs shown before, to highlight what arrived since
  var fresh = {};
  var loading = null;
  var storageLoading = null;
  var storagePoll = null;   // timer of the next poll while the compression job runs
  var jobActive = false;    // the last answer showed the job counting or running

  function $(id) { return document.getElementById(id); }

  function formatBytes(bytes) {
    return window.NeuroNovaUpload ? window.NeuroNovaUpload.formatBytes(bytes) : bytes + ' B';
  }

  function cell(row, text, className) {
    var td = document.createElement('td');
    if (className) {
      td.className = className;
    }
    if (text !== undefined) {
      td.textContent = text;
    }
    row.appendChild(td);
    return td;
  }

  function span(parent, text, className) {
    var element = document.createElement('span');
    element.className = className;
    element.textContent = text;
    parent.appendChild(element);
    return element;
  }

  function matches(study, filter) {
    if (!filter) {
      return true;
    }
    var haystack = [study.patient_name, study.patient_id, study.study_description, study.accession_number,
                    study.study_date, study.modalities.join(' ')].join(' ').toLowerCase();
    return filter.split(/\s+/).every(function (word) { return haystack.indexOf(word) >= 0; });
  }

  function render() {
    var body = $('nn-studies-body');
    var filter = $('nn-filter').value.trim().toLowerCase();
    var shown = studies.filter(function (study) { return matches(study, filter); });
    body.innerHTML = '';
    if (!shown.length) {
      var empty = document.createElement('tr');
      empty.className = 'nn-empty';
      var td = cell(empty, t(studies.length ? 'No study matches the filter.'
        : 'No study stored yet. Press "Upload DICOM" to add some.'));
      td.colSpan = 9;
      body.appendChild(empty);
      return;
    }
    shown.forEach(function (study) {
      var row = document.createElement('tr');
      row.setAttribute('data-study-id', study.id);
      if (fresh[study.id]) {
        row.className = 'nn-new';
      }
      var patient = cell(row);
      span(patient, study.patient_name || t('(no name)'), 'nn-patient-name');
      span(patient, study.patient_id, 'nn-patient-id');
      var date = cell(row, study.study_date || '-');
      if (study.study_time) {
        span(date, study.study_time, 'nn-sub');
      }
      var description = cell(row, study.study_description || '-');
      if (study.accession_number) {
        span(description, t('Accession {number}', {number: study.accession_number}), 'nn-sub');
      }
      var modalities = cell(row);
      study.modalities.forEach(function (modality) { span(modalities, modality, 'nn-modality'); });
      cell(row, String(study.series_count), 'nn-num');
      cell(row, String(study.instance_count), 'nn-num');
      cell(row, formatBytes(study.stored_bytes), 'nn-num');
      var saving = cell(row, undefined, 'nn-num');
      if (study.saved_bytes === null || study.saved_bytes === undefined) {
        span(saving, '-', 'nn-none').title = t('No ingest history for this study');
      } else {
        span(saving, formatBytes(study.saved_bytes) + ' (' + study.saving_percent + '%)', 'nn-saving').title =
          t('{size} received', {size: formatBytes(study.received_bytes)});
      }
      var open = cell(row, undefined, 'nn-open-cell');
      var which = t('the study {what} of {who}', {what: study.study_description || study.study_date || '',
                                                   who: study.patient_name || study.patient_id});
      if (study.viewer_url && viewer && viewer.available) {
        openLink(open, study.viewer_url, t('Open in viewer'), t('Open {which} in the OHIF Viewer', {which: which}),
                 'nn-open-viewer').target = '_blank';
      }
      openLink(open, study.explorer_url, t('Open in Explorer'), t('Open {which} in Orthanc Explorer', {which: which}),
               'nn-open-explorer');
      var moveButton = document.createElement('button');
      moveButton.type = 'button';
      moveButton.className = 'nn-open nn-open-move';
      moveButton.textContent = t('Move to patient...');
      moveButton.setAttribute('aria-label', t('Move {which} to another patient', {which: which}));
      moveButton.addEventListener('click', function () {
        window.NeuroNovaMove.open({study: study.id, patientId: study.patient_id, patientName: study.patient_name,
                                   date: study.study_date, description: study.study_description,
                                   instances: study.instance_count});
      });
      open.appendChild(moveButton);
      body.appendChild(row);
    });
  }

  function openLink(parent, url, text, label, className) {
    var link = document.createElement('a');
    link.className = 'nn-open ' + className;
    link.href = new URL(url, ORTHANC_ROOT).href;
    link.textContent = text;
    link.setAttribute('aria-label', label);
    parent.appendChild(link);
    return link;
  }

  /** Why "Open in viewer" is missing, when the plugin could not set the viewer up. */
  function showViewerStatus() {
    var note = $('nn-viewer-note');
    note.textContent = viewer && !viewer.available ? t('The viewer is not available: {error}.', {error: viewer.error}) : '';
    note.hidden = !note.textContent;
  }

  function showError(text) {
    var box = $('nn-list-error');
    box.textContent = text;
    box.hidden = !text;
  }

  /** The plugin's JSON answer; rejects with the server's `error` text, or the HTTP status when no JSON came. */
  function requestJson(url, method) {
    return fetch(url, {method: method || 'GET', credentials: 'same-origin', cache: 'no-store'})
      .then(function (response) {
        return response.text().then(function (text) {
          var answer = null;
          try {
            answer = JSON.parse(text);
          } catch (error) { /* not JSON: reported below */ }
          if (!response.ok || !answer || !answer.success) {
            var failure = new Error(answer && answer.error ? answer.error
                                                           : t('HTTP {status}', {status: response.status}));
            // a busy or starting server (503) says when to ask again
            failure.retryAfter = response.status === 503 ? parseInt(response.headers.get('Retry-After'), 10) || 0 : 0;
            throw failure;
          }
          return answer;
        });
      });
  }

  function load() {
    if (loading) {
      return loading;
    }
    loading = requestJson(STUDIES_URL)
      .then(function (answer) {
        studies = answer.studies;
        viewer = answer.viewer || null;
        showViewerStatus();
        if (known !== null) {
          studies.forEach(function (study) {
            if (!known[study.id]) {
              fresh[study.id] = true;
            }
          });
        }
        known = {};
        studies.forEach(function (study) { known[study.id] = true; });
        showError('');
        render();
        $('nn-list-status').textContent = t('Showing {shown} of {total} studies, most recently received first. ' +
          'Updated {time}.', {shown: studies.length, total: answer.total, time: new Date().toLocaleTimeString()});
      })
      .catch(function (error) {
        showError(t('Could not load the study list: {error}', {error: error.message}));
        $('nn-list-status').textContent = '';
        if (error.retryAfter) {
          window.setTimeout(load, error.retryAfter * 1000);
        }
      })
      .then(function () { loading = null; });
    return loading;
  }

  // ---------------------------------------------------------------- the storage panel

  function setText(id, text) {
    var element = $(id);
    element.textContent = text;
    element.hidden = !text;
  }

  function jobCounts(job) {
    var parts = [t('{count} compressed', {count: job.compressed})];
    if (job.already) {
      parts.push(t('{count} already compressed', {count: job.already}));
    }
    parts.push(t('{count} kept as received', {count: job.kept}), t('{count} failed', {count: job.failed}));
    return parts.join(', ');
  }

  function renderFigures(answer, statistics) {
    $('nn-storage-received').textContent = formatBytes(answer.received_bytes);
    $('nn-storage-stored').textContent = formatBytes(answer.stored_bytes);
    var saved = $('nn-storage-saved');
    saved.textContent = formatBytes(answer.saved_bytes) + ' (' + answer.saving_percent + '%)';
    saved.className = answer.saved_bytes > 0 ? 'nn-saving' : '';
    var files = t('{files} compressed, {plain} as received', {files: plural(answer.compressed_files, 'file'),
                                                               plain: answer.plain_files});
    if (answer.pending) {
      files += ', ' + t('{count} waiting', {count: answer.pending});
    }
    $('nn-storage-files').textContent = files + ' \u00b7 ' +
      t(answer.when === 'background' ? 'compression in the background' : 'compression at ingest');
    // Files stored before the plugin are unknown to it until the job has looked at them.
    var counted = answer.compressed_files + answer.plain_files + answer.pending;
    var untracked = statistics ? statistics.CountInstances - counted : 0;
    setText('nn-storage-untracked', untracked > 0 && !jobActive
      ? t(untracked === 1 ? '{instances} stored before the plugin is not counted yet: "Compress existing storage" takes it in.'
        : '{instances} stored before the plugin are not counted yet: "Compress existing storage" takes them in.',
          {instances: plural(untracked, 'instance')}) : '');
  }

  function renderJob(job) {
    var active = job.state === 'counting' || job.state === 'running';
    var button = $('nn-storage-compress');
    button.disabled = active;
    button.setAttribute('aria-disabled', String(active));
    $('nn-storage-job').hidden = !active;
    if (active) {
      var progress = $('nn-storage-progress');
      var percent = Math.max(0, Math.min(100, job.percent || 0));
      progress.querySelector('.nn-progress-bar').style.width = percent + '%';
      progress.querySelector('.nn-progress-label').textContent = job.state === 'counting' ? t('Counting files...')
        : percent + '%';
      progress.setAttribute('aria-valuenow', String(Math.round(percent)));
      progress.setAttribute('aria-valuetext', job.state === 'counting' ? t('Counting files') : percent + '%');
      $('nn-storage-job-text').textContent = job.state === 'counting'
        ? t('Compressing the existing storage: counting the stored files...')
        : t('Compressing the existing storage: {scanned} of {total} scanned, {counts}', {
          scanned: job.scanned, total: plural(job.total, 'file'), counts: jobCounts(job)}) +
          (job.elapsed_seconds >= 1 ? ' \u00b7 ' + t('{rate} files/s', {rate: job.files_per_second}) : '');
    }
    var finished = job.finished ? ' (' + new Date(job.finished * 1000).toLocaleString() + ')' : '';
    if (job.state === 'done') {
      setText('nn-storage-done', t('Compression of the existing storage done{when}: {scanned} scanned, {counts}.', {
        when: finished, scanned: plural(job.scanned, 'file'), counts: jobCounts(job)}));
    } else {
      setText('nn-storage-done', '');
    }
    if (job.state === 'failed') {
      showStorageError(t('Compression of the existing storage stopped{when}: {error} ({scanned} of {total} scanned, ' +
        '{counts}).', {when: finished, error: job.error || t('unknown error'), scanned: job.scanned,
                       total: plural(job.total, 'file'), counts: jobCounts(job)}));
    }
    var wasActive = jobActive;
    jobActive = active;
    if (wasActive && !active) {
      load();  // the study list's stored sizes changed
    }
  }

  function showStorageError(text) {
    setText('nn-storage-error', text);
  }

  function schedulePoll() {
    window.clearTimeout(storagePoll);
    storagePoll = jobActive ? window.setTimeout(loadStorage, JOB_POLL_MS) : null;
  }

  function loadStorage() {
    if (storageLoading) {
      return storageLoading;
    }
    // Orthanc's own counts, to tell files the plugin does not know yet; optional.
    var statistics = fetch(STATISTICS_URL, {credentials: 'same-origin', cache: 'no-store'})
      .then(function (response) { return response.ok ? response.json() : null; })
      .catch(function () { return null; });
    storageLoading = Promise.all([requestJson(STORAGE_URL), statistics])
      .then(function (answers) {
        showStorageError('');
        renderJob(answers[0].job);
        renderFigures(answers[0], answers[1]);
      })
      .catch(function (error) {
        showStorageError(t('Could not load the storage figures: {error}', {error: error.message}));
      })
      .then(function () {
        storageLoading = null;
        schedulePoll();
      });
    return storageLoading;
  }

  function startCompression() {
    var button = $('nn-storage-compress');
    button.disabled = true;
    showStorageError('');
    setText('nn-storage-done', '');
    requestJson(COMPRESS_URL, 'POST')
      .then(function (answer) {
        renderJob(answer.job);
        setText('nn-storage-untracked', '');
        schedulePoll();
      })
      .catch(function (error) {
        button.disabled = jobActive;
        showStorageError(t('Could not start the compression of the existing storage: {error}', {error: error.message}));
      });
  }

  function loadOrthancName() {
    fetch(new URL('system', ORTHANC_ROOT).href, {credentials: 'same-origin'})
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (system) {
        if (system && system.Name) {
          var link = document.createElement('a');
          link.href = new URL('app/explorer.html', ORTHANC_ROOT).href;
          link.textContent = system.Name + ' \u00bb ';
          $('nn-orthanc-name').appendChild(link);
          document.title = system.Name + ' - ' + t('Studies');
        }
      })
      .catch(function () { /* the title stays generic */ });
  }

  window.NeuroNovaDashboard = {requestJson: requestJson, cell: cell, span: span, formatBytes: formatBytes,
                               reloadStudies: function () { return load(); }};

  document.addEventListener('DOMContentLoaded', function () {
    document.documentElement.lang = I18N.lang;
    I18N.translatePage(document);
    document.title = t('Studies');
    $('nn-open-upload').addEventListener('click', function () {
      window.NeuroNovaUpload.open({});
    });
    $('nn-refresh').addEventListener('click', function () {
      load();
      loadStorage();
    });
    $('nn-storage-compress').addEventListener('click', startCompression);
    $('nn-filter').addEventListener('input', render);
    document.addEventListener('neuronova:uploaded', function () {
      load();
      loadStorage();
    });
    window.setInterval(function () {
      if (document.visibilityState === 'visible') {
        load();
        if (!jobActive) {  // while the job runs, the panel polls by itself
          loadStorage();
        }
      }
    }, AUTO_REFRESH_MS);
    loadOrthancName();
    loadStorage();
    load();
  });
})(window, document);
