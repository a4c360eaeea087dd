/*
 * NeuroNova RIS dashboard (/neuronova/app/index.html): the study list and the upload dialog.
 * Relative URLs only, so the page works behind a reverse proxy prefix; the browser's Orthanc login
 * (HTTP Basic) is sent with every same-origin request.
 */
(function (window, document) {
  'use strict';

  var PAGE_BASE = new URL('./', window.location.href).href;          // <prefix>/neuronova/app/
  var ORTHANC_ROOT = new URL('../../', PAGE_BASE).href;               // <prefix>/
  var STUDIES_URL = new URL('../studies?limit=200', PAGE_BASE).href;  // <prefix>/neuronova/studies
  var AUTO_REFRESH_MS = 30000;

  var studies = [];
  var known = null;  // study IDs shown before, to highlight what arrived since
  var fresh = {};
  var loading = null;

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
      var td = cell(empty, studies.length ? 'No study matches the filter.'
        : 'No study stored yet. Press "Upload DICOM" to add some.');
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
      span(patient, study.patient_name || '(no name)', 'nn-patient-name');
      span(patient, study.patient_id, 'nn-patient-id');
      var date = cell(row, study.study_date || '-');
      if (study.study_time) {
        span(date, study.study_time, 'nn-sub');
      }
      var description = cell(row, study.study_description || '-');
      if (study.accession_number) {
        span(description, 'Accession ' + study.accession_number, 'nn-sub');
      }
      var modalities = cell(row);
      study.modalities.forEach(function (modality) { span(modalities, modality, 'nn-modality'); });
      cell(row, String(study.series_count), 'nn-num');
      cell(row, String(study.instance_count), 'nn-num');
      cell(row, formatBytes(study.stored_bytes), 'nn-num');
      var saving = cell(row, undefined, 'nn-num');
      if (study.saved_bytes === null || study.saved_bytes === undefined) {
        span(saving, '-', 'nn-none').title = 'No ingest history for this study';
      } else {
        span(saving, formatBytes(study.saved_bytes) + ' (' + study.saving_percent + '%)', 'nn-saving').title =
          formatBytes(study.received_bytes) + ' received';
      }
      var open = cell(row);
      var link = document.createElement('a');
      link.className = 'nn-open';
      link.href = new URL(study.explorer_url, ORTHANC_ROOT).href;
      link.textContent = 'Open in Explorer';
      link.setAttribute('aria-label', 'Open the study ' + (study.study_description || study.study_date || '') +
        ' of ' + (study.patient_name || study.patient_id) + ' in Orthanc Explorer');
      open.appendChild(link);
      body.appendChild(row);
    });
  }

  function showError(text) {
    var box = $('nn-list-error');
    box.textContent = text;
    box.hidden = !text;
  }

  function load() {
    if (loading) {
      return loading;
    }
    loading = fetch(STUDIES_URL, {credentials: 'same-origin', cache: 'no-store'})
      .then(function (response) {
        return response.text().then(function (text) {
          var answer = null;
          try {
            answer = JSON.parse(text);
          } catch (error) { /* not JSON: reported below */ }
          if (!response.ok || !answer || !answer.success) {
            throw new Error(answer && answer.error ? answer.error : 'HTTP ' + response.status);
          }
          return answer;
        });
      })
      .then(function (answer) {
        studies = answer.studies;
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
        $('nn-list-status').textContent = 'Showing ' + studies.length + ' of ' + answer.total +
          ' studies, most recently received first. Updated ' + new Date().toLocaleTimeString() + '.';
      })
      .catch(function (error) {
        showError('Could not load the study list: ' + error.message);
        $('nn-list-status').textContent = '';
      })
      .then(function () { loading = null; });
    return loading;
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
          document.title = system.Name + ' - Studies';
        }
      })
      .catch(function () { /* the title stays generic */ });
  }

  document.addEventListener('DOMContentLoaded', function () {
    $('nn-open-upload').addEventListener('click', function () {
      window.NeuroNovaUpload.open({});
    });
    $('nn-refresh').addEventListener('click', function () { load(); });
    $('nn-filter').addEventListener('input', render);
    document.addEventListener('neuronova:uploaded', function () { load(); });
    window.setInterval(function () {
      if (document.visibilityState === 'visible') {
        load();
      }
    }, AUTO_REFRESH_MS);
    loadOrthancName();
    load();
  });
})(window, document);
