/**
 * NeuroNova ingest: an "Upload DICOM" button on Orthanc Explorer's pages, opening the upload dialog
 * (with patient assignment from the EMR, batch upload and progress) served by the plugin.
 *
 * Orthanc serves this code inside <prefix>/plugins/explorer.js, loaded by <prefix>/app/explorer.html
 * after jQuery 1.7 and jQuery Mobile 1.1: the plugin's files are at <prefix>/neuronova/app/.
 */
(function () {
  'use strict';

  var here = (document.currentScript && document.currentScript.src) || window.location.href;
  var appBase = new URL('../neuronova/app/', here).href;
  var loading = null;
  // The button is drawn before the dialog's scripts load: its two texts are here (i18n.js has the rest).
  var korean = (function () {
    var languages = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || ''];
    for (var i = 0; i < languages.length; i++) {
      var primary = String(languages[i]).toLowerCase().split('-')[0];
      if (primary === 'ko' || primary === 'en') {
        return primary === 'ko';
      }
    }
    return false;
  })();

  function loadScript(name) {
    return new Promise(function (resolve, reject) {
      var script = document.createElement('script');
      script.src = appBase + name;
      script.onload = resolve;
      script.onerror = function () {
        script.remove();
        reject(new Error('could not load ' + script.src));
      };
      document.head.appendChild(script);
    });
  }

  function loadDialog() {
    if (window.NeuroNovaUpload) {
      return Promise.resolve(window.NeuroNovaUpload);
    }
    if (!loading) {
      loading = new Promise(function (resolve, reject) {
        var style = document.createElement('link');
        style.rel = 'stylesheet';
        style.href = appBase + 'upload-dialog.css';
        document.head.appendChild(style);
        loadScript('i18n.js').then(function () { return loadScript('upload-dialog.js'); }).then(function () {
          resolve(window.NeuroNovaUpload);
        }, function (error) {
          loading = null;
          style.remove();
          reject(error);
        });
      });
    }
    return loading;
  }

  /** After an upload, redraw the page shown (patient lists, a patient's studies...) as Explorer does. */
  function refreshActivePage() {
    var page = $.mobile && $.mobile.activePage;
    if (page && page.length && page.attr('id') !== 'lookup') {
      page.trigger('pagebeforeshow');
    }
  }

  // Before jQuery Mobile enhances a page: add the button to its header's left-hand group (after "Lookup"
  // and "Plugins"; the right-hand one already holds three buttons and would cover long page titles).
  $(document).on('pagebeforecreate', '[data-role="page"]', function () {
    var group = $(this).children('[data-role="header"]').children('.ui-btn-left');
    if (group.length === 0 || group.find('.neuronova-upload-open').length > 0) {
      return;
    }
    $('<a>')
      .attr({
        href: '#',
        role: 'button',  // it opens a dialog, it goes nowhere
        'data-role': 'button',
        'data-icon': 'plus',
        'class': 'neuronova-upload-open',
        title: korean ? 'DICOM 파일을 업로드하고 EMR 환자에 배정합니다'
          : 'Upload DICOM files, assigning them to an EMR patient'
      })
      .text(korean ? 'DICOM 업로드' : 'Upload DICOM')
      .appendTo(group);
  });

  $(document).on('click', '.neuronova-upload-open', function (event) {
    event.preventDefault();
    loadDialog().then(function (dialog) {
      dialog.open({onUploaded: refreshActivePage, studyListLink: true});
    }, function (error) {
      window.alert('NeuroNova: the upload dialog is not available (' + error.message + ').');
    });
  });
})();
